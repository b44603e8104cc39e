"""Fine-tuning from recipe checkpoints: init_from, linear probe, layer decay, multi-view test, predict, export."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_POST_PRETRAIN, clip_sample, tiny_run_args, write_shards
from safetensors.torch import load_file

import vfm
from vfm.cli import main
from vfm.data.transforms import eval_views
from vfm.eval import linear_probe
from vfm.export import export
from vfm.recipes.checkpoints import read_checkpoint
from vfm.recipes.finetune import VideoClassification
from vfm.recipes.layer_decay import layer_decay_groups, vit_layer_id

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MOTIONS = ["left", "right", "up"]
TINY_DATA = tiny_run_args(samples_per_epoch=8)
# recipe -> its config and the tiny-model arguments of a 2-step fit; a recipe joins the init_from and export
# tests by adding its entry here (all recipes key their video tower as `video.`)
RECIPES = {
    "post_pretrain": ["--config", str(CONFIGS / "post_pretrain.yaml"), *TINY_POST_PRETRAIN],
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("labelled")
    samples = [clip_sample(i, reverse_caption=f"reversed {i}", motion=MOTIONS[i % 3]) for i in range(20)]
    write_shards(directory, samples[:12], 6, "train")
    write_shards(directory, samples[12:], 4, "val")
    (directory / "classes.json").write_text(json.dumps({"motion": MOTIONS}))
    return directory


def data_args(shards: Path, root: Path) -> list[str]:
    return [
        "--data.train_shards",
        str(shards / "train-*.tar"),
        "--data.val_shards",
        str(shards / "val-*.tar"),
        *TINY_DATA,
        f"--trainer.default_root_dir={root}",
    ]


@pytest.fixture(scope="module", params=sorted(RECIPES))
def recipe_checkpoint(request, shards, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(request.param)
    fit = main(["fit", *RECIPES[request.param], *data_args(shards, root), "--trainer.max_steps", "2"])
    return Path(fit.trainer.checkpoint_callback.last_model_path)


def test_init_from_takes_the_video_tower_of_a_recipe_checkpoint(recipe_checkpoint):
    recipe = VideoClassification(init_from=str(recipe_checkpoint), num_classes=3)
    recipe.setup("fit")
    source = read_checkpoint(recipe_checkpoint)["state_dict"]
    video = {k[len("video.") :]: v for k, v in source.items() if k.startswith("video.")}
    assert video.keys() == recipe.video.state_dict().keys()
    assert all(torch.equal(recipe.video.state_dict()[k], v) for k, v in video.items())
    with pytest.raises(KeyError, match="no weights under 'visual.'"):
        VideoClassification(init_from=str(recipe_checkpoint), init_prefix="visual.", num_classes=3).setup("fit")


def test_export_round_trip_gives_the_checkpoints_embeddings(recipe_checkpoint, tmp_path):
    # the CLI records the recipe's class in the checkpoint: the base class rebuilds whichever recipe it was
    recipe = L.LightningModule.load_from_checkpoint(recipe_checkpoint, map_location="cpu").eval()
    encoders = vfm.load_encoder(export(recipe_checkpoint, tmp_path / "export"))
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted(
        ["config.json", *(f"{name}.safetensors" for name in encoders.config["towers"])]
    )
    video = torch.randn(2, 4, 3, 32, 32)
    text = torch.randint(1, 400, (2, 32))
    text[:, 0], text[:, 7], text[:, 8:] = 49406, 49407, 0
    with torch.no_grad():
        torch.testing.assert_close(encoders.encode_video(video, normalize=False), recipe.encode_video(video))
        if encoders.text is not None:
            expected = recipe.encode_text(text, text != 0)
            torch.testing.assert_close(encoders.encode_text(text, normalize=False), expected)


def test_classification_fit_test_predict_and_export(recipe_checkpoint, shards, tmp_path):
    common = [
        "--config",
        str(CONFIGS / "finetune_classification.yaml"),
        *data_args(shards, tmp_path),
        "--data.label_key",
        "motion",
        "--data.classes",
        str(shards / "classes.json"),
        "--model.mixup_alpha",
        "0.8",
        "--model.cutmix_alpha",
        "1.0",
    ]
    init = tmp_path / "init.ckpt"
    init.write_bytes(recipe_checkpoint.read_bytes())
    fit = main(["fit", *common, f"--model.init_from={init}", "--trainer.max_epochs", "1"])
    assert fit.model.hparams.num_classes == 3 and fit.trainer.global_step == 2
    checkpoint = fit.trainer.checkpoint_callback.last_model_path
    init.unlink()  # a fine-tuned checkpoint rebuilds from its own hyper-parameters, not the init file
    tested = main(["test", *common, f"--ckpt_path={checkpoint}", "--data.test_clips", "2", "--data.test_crops", "2"])
    metrics = {k: float(v) for k, v in tested.trainer.callback_metrics.items()}
    assert 0 <= metrics["test/top1"] <= metrics["test/top5"] == 1.0  # 3 classes: top-5 always holds
    assert metrics["test/chance_top1"] == pytest.approx(1 / 3)
    out = tmp_path / "predictions"
    main(["predict", *common, f"--ckpt_path={checkpoint}", f"--prediction_writer.output_dir={out}"])
    index = json.loads((out / "predictions-rank0.json").read_text())
    tensors = load_file(out / "predictions-rank0.safetensors")
    assert len(index["keys"]) == 8 == len(set(index["keys"])) and tensors["probs"].shape == (8, 3)
    torch.testing.assert_close(tensors["video"].norm(dim=-1), torch.ones(8))
    encoders = vfm.load_encoder(export(checkpoint, tmp_path / "export"))
    assert encoders.config["classes"] == MOTIONS and encoders.text is None
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoders.classify(video), tested.model.eval()(video))


def test_predict_writes_video_and_text_embeddings_of_a_retrieval_recipe(recipe_checkpoint, shards, tmp_path):
    args = [*RECIPES["post_pretrain"], *data_args(shards, tmp_path), f"--ckpt_path={recipe_checkpoint}"]
    main(["predict", *args, f"--prediction_writer.output_dir={tmp_path}"])
    tensors = load_file(tmp_path / "predictions-rank0.safetensors")
    assert tensors["video"].shape == tensors["text"].shape == (8, 32)
    assert len(json.loads((tmp_path / "predictions-rank0.json").read_text())["keys"]) == 8


def test_linear_probe_trains_the_head_only():
    recipe = VideoClassification(model="vit-tiny-test", num_classes=3, linear_probe=True)
    recipe.train()
    assert not recipe.video.training and recipe.head.training
    groups = layer_decay_groups(recipe, 0.05, 0.75, 2, lambda name: vit_layer_id(name, 2))
    in_optimizer = {id(p) for group in groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in recipe.head.parameters()}
    before = {k: v.clone() for k, v in recipe.video.state_dict().items()}
    loss = recipe.training_step({"video": torch.randn(4, 4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0])}, 0)
    loss.backward()
    assert recipe.head.weight.grad is not None
    assert all(p.grad is None for p in recipe.video.parameters())
    assert all(torch.equal(before[k], v) for k, v in recipe.video.state_dict().items())


def test_layer_decay_scales_depth():
    recipe = VideoClassification(model="vit-tiny-test", num_classes=3)
    scale = {}
    names = {id(p): n for n, p in recipe.named_parameters()}
    for group in layer_decay_groups(recipe, 0.05, 0.5, 2, lambda name: vit_layer_id(name, 2)):
        scale |= {names[id(p)]: group["lr_scale"] for p in group["params"]}
    assert scale["video.conv1.weight"] == scale["video.temporal_embedding"] == 0.125
    assert scale["video.transformer.resblocks.0.attn.in_proj_weight"] == 0.25
    assert scale["video.transformer.resblocks.1.mlp.c_fc.weight"] == 0.5
    assert scale["video.proj"] == scale["head.weight"] == 1.0


def test_multi_view_probabilities_average_the_views():
    recipe = VideoClassification(model="vit-tiny-test", num_classes=3).eval()
    views = torch.randn(2, 3, 4, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([recipe(views[:, v]).softmax(-1) for v in range(3)], 1).mean(1)
        torch.testing.assert_close(recipe.predict_proba(views), expected)


def test_eval_views_interleave_clips_and_spread_crops():
    frames = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 32, 48).clone()
    frames[..., 40:] = 200  # the right edge: only the last crop sees it
    views = eval_views(frames, 32, clips=2, crops=3)
    assert views.shape == (6, 3, 3, 32, 32)
    assert views[0, :, 0, 0, 0].tolist() == [0, 2, 4] and views[3, :, 0, 0, 0].tolist() == [1, 3, 5]
    assert views[0].max() < 200 and views[2].max() == 200


def test_cached_linear_probe_reads_each_clip_once(recipe_checkpoint, shards, tmp_path, capsys):
    args = [
        "--config",
        str(CONFIGS / "linear_probe.yaml"),
        *data_args(shards, tmp_path),
        "--data.label_key=motion",
        f"--data.classes={shards / 'classes.json'}",
        f"--model.init_from={recipe_checkpoint}",
        "--probe.epochs=5",
    ]
    result = linear_probe.main(args)  # the command line's entry point: prints the figures as JSON
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{\n") :])["top1"] == pytest.approx(result["top1"])
    assert result["train_clips"] == 12 and result["test_clips"] == 8  # every clip once, whatever samples_per_epoch
    assert result["chance_top1"] == pytest.approx(1 / 3) and result["majority_top1"] == pytest.approx(3 / 8)
    assert set(result["holdout_top1"]) == set(linear_probe.WEIGHT_DECAYS)
