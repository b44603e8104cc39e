"""The post-pretraining recipe: losses, dropping schedule, hard negatives, and a CLI fit/test round trip."""

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_POST_PRETRAIN, clip_sample, tiny_run_args, write_shards

from vfm.cli import main
from vfm.recipes.post_pretrain import PostPretrain
from vfm.recipes.time_order import append_reversed_clips

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_recipe(**overrides) -> PostPretrain:
    settings = dict(model="vit-tiny-test", num_frames=4, drop_ratio=0.5, fusion_heads=4, temperature_init=0.07)
    recipe = PostPretrain(**{**settings, **overrides})
    recipe.log_dict = lambda *args, **kwargs: None  # no trainer attached
    return recipe


def batch(size: int = 6, frames: int = 4) -> dict:
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, 400, (size, 12), generator=generator)
    text[:, 0], text[:, 8], text[:, 9:] = 49406, 49407, 0
    reverse = text.flip(1).roll(4, 1)
    return {
        "video": torch.randn(size, frames, 3, 32, 32, generator=generator),
        "text": text,
        "text_mask": text != 0,
        "reverse_text": reverse,
        "reverse_text_mask": reverse != 0,
        "caption": [f"caption {i}" for i in range(size)],
    }


def test_training_step_trains_every_tower():
    recipe = tiny_recipe()
    loss = recipe.training_step(batch(), 0)
    loss.backward()
    assert torch.isfinite(loss)
    for name in (
        "video.conv1.weight",
        "video.temporal_embedding",
        "text.token_embedding.weight",
        "fusion.layers.0.cross_attn.in_proj_weight",
        "vtc.logit_scale.log_scale",
    ):
        param = dict(recipe.named_parameters()).get(name)
        if param is None:  # names differ across fusion implementations: check the tower instead
            continue
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert recipe.fusion.mlm_head.decoder.weight is recipe.text.token_embedding.weight


def test_reverse_negatives_append_reversed_clips_with_reversed_captions():
    data = batch()
    both = append_reversed_clips(data, 0.5)
    video, text, captions = both.video, both.text, both.captions
    assert video.shape[0] == 9 and len(captions) == 9 and both.size == 6 and both.count == 3
    assert torch.equal(video[6], data["video"][0].flip(0))
    assert torch.equal(text[7], data["reverse_text"][1])
    assert torch.equal(both.text_mask[8], data["reverse_text_mask"][2])
    assert len(set(captions)) == 9  # the reversed clips are negatives of their originals


def test_time_order_term_is_chance_for_an_order_blind_encoder():
    # Without a temporal embedding and with mean pooling the encoder cannot tell a clip from its reversal:
    # the extra term is exactly log 2, and it is added to the loss with its weight.
    recipe = tiny_recipe(reverse_negatives=0.5, hard_negative_weight=2.0, drop_ratio=0.5, mlm_weight=0.0, pool="mean")
    logged = {}
    recipe.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    recipe.train().training_step(batch(), 0)
    assert logged["train/hard_negative"] == pytest.approx(math.log(2), abs=1e-4)
    assert logged["train/loss"] == pytest.approx(logged["train/vtc"] + 2 * logged["train/hard_negative"], rel=1e-5)
    recipe = tiny_recipe(reverse_negatives=0.5, hard_negative_weight=1.0, temporal_init_std=0.5, mlm_weight=0.0)
    recipe.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    recipe.train().training_step(batch(), 0)
    assert logged["train/hard_negative"] != pytest.approx(math.log(2), abs=1e-4)


def test_unmasked_final_phase_turns_dropping_off():
    recipe = tiny_recipe(drop_ratio=0.75, unmasked_fraction=0.2)
    for progress, expected in [(0.5, 0.75), (0.79, 0.75), (0.8, 0.0), (0.95, 0.0)]:
        recipe.training_progress = lambda progress=progress: progress
        recipe.training_step(batch(), 0)
        assert recipe.video.drop_ratio == expected


def test_vtc_and_mlm_go_down_on_a_fixed_batch():
    torch.manual_seed(0)
    recipe = tiny_recipe(drop_ratio=0.0)
    optimizer = torch.optim.AdamW(recipe.parameters(), lr=2e-3)
    data = batch(8)
    logged = {}
    recipe.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    history = []
    for step in range(40):
        loss = recipe.training_step(data, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append((logged["train/vtc"], logged["train/mlm"]))
    first, last = history[0], history[-1]
    assert last[0] < 0.5 * first[0], history
    assert last[1] < first[1], history


@pytest.fixture(scope="module")
def recipe_shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pp_shards")
    write_shards(directory, [clip_sample(i, reverse_caption=f"reversed {i}") for i in range(16)], 8, "train")
    write_shards(directory, [clip_sample(100 + i, reverse_caption=f"reversed {i}") for i in range(8)], 4, "val")
    return directory


def test_fit_then_test_through_the_cli(recipe_shards, tmp_path):
    common = [
        "--config",
        str(CONFIGS / "post_pretrain.yaml"),
        *TINY_POST_PRETRAIN,
        "--data.train_shards",
        str(recipe_shards / "train-*.tar"),
        "--data.val_shards",
        str(recipe_shards / "val-*.tar"),
        *tiny_run_args(root=tmp_path),
    ]
    fit = main(["fit", *common, "--trainer.max_epochs", "1"])
    checkpoint = fit.trainer.checkpoint_callback.last_model_path
    assert Path(checkpoint).is_file() and fit.trainer.global_step == 4
    tested = main(["test", *common, f"--ckpt_path={checkpoint}"])
    metrics = tested.trainer.callback_metrics
    assert metrics["test/num_samples"] == 8
    for key in ("test/t2v_r1", "test/v2t_r1", "test/chance_r1", "test/temporal_acc", "test/t2v_median_rank"):
        assert 0 <= float(metrics[key]) <= 8, key


def test_time_order_warmup_trains_the_order_term_alone_then_everything():
    recipe = tiny_recipe(reverse_negatives=0.5, hard_negative_weight=2.0, time_order_warmup=0.2, drop_ratio=0.75)
    logged = {}
    recipe.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    recipe.train()
    recipe.training_progress = lambda: 0.1
    recipe.training_step(batch(), 0)
    assert recipe.video.drop_ratio == 0.0 and "train/mlm" not in logged
    assert logged["train/loss"] == pytest.approx(2 * logged["train/hard_negative"], rel=1e-5)
    logged.clear()
    recipe.training_progress = lambda: 0.5
    recipe.training_step(batch(), 0)
    assert recipe.video.drop_ratio == 0.75 and "train/mlm" in logged
    expected = logged["train/vtc"] + 2 * logged["train/hard_negative"] + logged["train/mlm"]
    assert logged["train/loss"] == pytest.approx(expected, rel=1e-5)


def test_time_order_ramp_raises_the_vtc_and_mlm_weights_linearly_after_the_warmup():
    recipe = tiny_recipe(reverse_negatives=1.0, hard_negative_weight=1.0, time_order_warmup=0.2, time_order_ramp=0.4)
    assert [recipe.phase_weight(p) for p in (0.0, 0.19, 0.2, 0.4, 0.6, 0.9)] == pytest.approx([0, 0, 0, 0.5, 1, 1])
    logged = {}
    recipe.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    recipe.train()
    recipe.training_progress = lambda: 0.3
    recipe.training_step(batch(), 0)
    expected = 0.25 * (logged["train/vtc"] + logged["train/mlm"]) + logged["train/hard_negative"]
    assert logged["train/loss"] == pytest.approx(expected, rel=1e-5)


def test_time_order_warmup_without_reversed_captions_fails_clearly():
    with pytest.raises(ValueError, match="hard_negative_weight"):
        tiny_recipe(time_order_warmup=0.2)
    recipe = tiny_recipe(reverse_negatives=1.0, hard_negative_weight=1.0, time_order_warmup=0.2).train()
    recipe.training_progress = lambda: 0.1
    plain = {k: v for k, v in batch().items() if not k.startswith("reverse_text")}
    with pytest.raises(ValueError, match="reverse_caption"):
        recipe.training_step(plain, 0)
