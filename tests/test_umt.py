"""UMT stage 1: the frozen teacher, semantic masking, alignment heads and loss, the recipe and its checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import clip_sample, random_clip_file, tiny_run_args, write_shards

from vfm.cli import main
from vfm.losses.alignment import alignment_loss
from vfm.models import weighted_keep_indices
from vfm.recipes.umt import UnmaskedTeacher
from vfm.recipes.umt_teacher import build_teacher

CONFIGS = Path(__file__).parents[1] / "configs"
STUDENT = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 3, "heads": 2, "num_frames": 4}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """A random vit-tiny-test open_clip checkpoint (32 px, patch 8, 2 blocks, width 64, output 32)."""
    return random_clip_file(tmp_path_factory.mktemp("teacher"), seed=0)


def recipe(teacher_file: Path, **overrides) -> UnmaskedTeacher:
    kwargs = dict(
        student=STUDENT,
        teacher=str(teacher_file),
        teacher_model="vit-tiny-test",
        align_layers=2,
        teacher_autocast=False,
        drop_path_rate=0.0,
        lr_reference_batch=None,
    )
    return UnmaskedTeacher(**(kwargs | overrides))


def test_teacher_is_frozen_in_eval_and_outside_the_module_tree(teacher_file):
    model = recipe(teacher_file)
    teacher = model.align.teacher
    assert all(not name.startswith("align.teacher") for name, _ in model.named_parameters())
    assert not any(key.startswith("align.teacher") for key in model.state_dict())
    assert not any(p.requires_grad for p in teacher.model.parameters())
    model.train()
    assert model.video.training and not teacher.model.training
    model.double()  # device / dtype moves reach the hidden teacher
    assert next(teacher.model.parameters()).dtype == torch.float64
    from vfm.recipes.optim import parameter_groups

    in_optimizer = {id(p) for group in parameter_groups(model, 0.05) for p in group["params"]}
    assert in_optimizer and not in_optimizer & {id(p) for p in teacher.model.parameters()}


def test_one_teacher_pass_matches_separate_attention_and_intermediate_passes(teacher_file):
    teacher = build_teacher(str(teacher_file), "vit-tiny-test", num_layers=2, autocast=False, num_frames=4)
    video = torch.randn(2, 4, 3, 32, 32)
    output = teacher(video)
    reference_attention = teacher.model.last_cls_attention(video)
    torch.testing.assert_close(output.cls_attention, reference_attention)
    assert ((output.cls_attention.sum(-1) > 0) & (output.cls_attention.sum(-1) < 1)).all()  # CLS-to-CLS left out
    # frame by frame = the image CLIP on each frame
    frames = teacher.model.forward_intermediates(video.flatten(0, 1)[:, None], indices=2, intermediates_only=True)
    for ours, per_frame in zip(output.layers, frames):
        torch.testing.assert_close(ours, per_frame[:, 1:].reshape(2, 4 * 16, -1))


def test_targets_equal_the_naive_all_token_projection(teacher_file):
    teacher = build_teacher(str(teacher_file), "vit-tiny-test", num_layers=2, autocast=False, num_frames=4)
    video = torch.randn(2, 4, 3, 32, 32)
    output = teacher(video)
    keep = weighted_keep_indices(output.cls_attention, 0.75)
    assert keep.shape == (2, 4 * 4)
    model = teacher.model
    # the official way: ln_post and proj on every token of every layer, normalise, then select the kept ones
    full = [F.normalize(model.ln_post(layer) @ model.proj, dim=-1) for layer in output.layers]
    naive = torch.stack([torch.stack([f[b, keep[b]] for b in range(2)]) for f in full])
    torch.testing.assert_close(teacher.targets(output.layers, keep), naive)


def test_teacher_resizes_input_to_its_resolution(teacher_file):
    teacher = build_teacher(str(teacher_file), "vit-tiny-test", num_layers=1, autocast=False, num_frames=2)
    video = torch.randn(1, 2, 3, 16, 16)
    output = teacher(video)
    assert output.cls_attention.shape == (1, 2, 16)  # the teacher's 4 x 4 grid at 32 px
    resized = F.interpolate(video[0], size=(32, 32), mode="bicubic", align_corners=False)[None]
    torch.testing.assert_close(output.cls_attention, teacher(resized).cls_attention)


def test_weighted_masking_matches_sequential_multinomial_draws():
    """Gumbel top-k = the official successive draws without replacement (torch.multinomial), k = 2 of 4."""
    weights = torch.tensor([0.5, 0.3, 0.15, 0.05])
    count = 40000
    ours = weighted_keep_indices(weights.expand(count, 1, 4), 0.5, torch.Generator().manual_seed(0))
    reference = torch.multinomial(weights.expand(count, 4), 2, generator=torch.Generator().manual_seed(1))
    ours_freq = torch.bincount(ours.flatten(), minlength=4) / count
    reference_freq = torch.bincount(reference.flatten(), minlength=4) / count
    torch.testing.assert_close(ours_freq, reference_freq, atol=0.015, rtol=0)
    assert ours_freq[0] > 0.8 and ours_freq[3] < 0.2  # not uniform


def test_alignment_loss_against_a_per_token_reference():
    student, teacher = torch.randn(2, 3, 5, 8), F.normalize(torch.randn(2, 3, 5, 8), dim=-1)
    total = 0.0
    for k in range(2):
        for b in range(3):
            for n in range(5):
                s = student[k, b, n] / student[k, b, n].norm()
                total += 2 - 2 * float(s @ teacher[k, b, n])
    assert math.isclose(float(alignment_loss(student, teacher)), total / 30, rel_tol=1e-5)
    assert float(alignment_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)


def test_student_sees_only_kept_tokens_and_the_loss_goes_down(teacher_file):
    torch.manual_seed(0)
    model = recipe(teacher_file, lr=3e-3)
    video = torch.randn(4, 4, 3, 32, 32)
    distill = model.align.distill_targets(video, 0.75)
    layers = model.video.forward_intermediates(video, indices=2, keep=distill.keep, intermediates_only=True)
    assert layers[0].shape == (4, 16, 32)  # 4 of 16 patches in each of 4 frames, no CLS token
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model.alignment_step(video)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_optimizer_is_fused_adamw_and_steps_as_the_reference_loop(teacher_file):
    from types import SimpleNamespace

    from vfm.recipes.optim import parameter_groups

    torch.manual_seed(0)
    model = recipe(teacher_file)
    model.trainer = SimpleNamespace(estimated_stepping_batches=10)
    optimizer = model.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"]  # on the CPU too: the per-tensor loop is ~5x slower at ViT-B
    reference = recipe(teacher_file)
    reference.load_state_dict(model.state_dict())
    reference_optimizer = torch.optim.AdamW(parameter_groups(reference, model.hparams.weight_decay),
                                            lr=optimizer.param_groups[0]["lr"], betas=model.hparams.betas,
                                            eps=optimizer.defaults["eps"], foreach=False)  # fmt: skip
    video = torch.randn(2, 4, 3, 32, 32)
    for module, opt in ((model, optimizer), (reference, reference_optimizer)):
        for _ in range(2):
            torch.manual_seed(1)  # the same masks on both sides
            module.alignment_step(video).backward()
            opt.step()
            opt.zero_grad()
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)


def test_grid_mismatch_between_student_and_teacher_is_an_error(teacher_file):
    with pytest.raises(ValueError, match="patch grid"):
        recipe(teacher_file, student=STUDENT | {"patch_size": 16})


@pytest.fixture(scope="module")
def umt_shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("umt_shards")
    write_shards(directory, [clip_sample(i) for i in range(16)], 8, "train")
    write_shards(directory, [clip_sample(100 + i) for i in range(8)], 4, "val")
    return directory


def cli_args(shards: Path, teacher: Path, root: Path) -> list[str]:
    """A tiny stage-1 run through the command line (2-layer student, 4 steps an epoch)."""
    return [
        "--config",
        str(CONFIGS / "umt.yaml"),
        "--model.student",
        '{"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "num_frames": 4}',
        "--model.teacher",
        str(teacher),
        "--model.teacher_model",
        "vit-tiny-test",
        "--model.align_layers",
        "2",
        "--model.teacher_autocast",
        "false",
        "--data.train_shards",
        str(shards / "train-*.tar"),
        "--data.val_shards",
        str(shards / "val-*.tar"),
        *tiny_run_args(context_length=None, root=root),
    ]


def test_fit_saves_no_teacher_and_resume_checks_the_teacher_file(umt_shards, teacher_file, tmp_path):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(teacher_file.read_bytes())
    common = cli_args(umt_shards, teacher, tmp_path)
    fit = main(["fit", *common, "--trainer.max_epochs", "1"])
    path = fit.trainer.checkpoint_callback.last_model_path
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert not any("teacher" in key for key in checkpoint["state_dict"])
    assert any(key.startswith("align.heads.heads.1.head") for key in checkpoint["state_dict"])
    assert checkpoint["umt_teacher"]["source"] == str(teacher)
    assert len(checkpoint["umt_teacher"]["sha256"]) == 64
    assert checkpoint["video_config"]["cls_token"] is False  # self-describing for init_from / linear probes
    tested = main(["test", *common, f"--ckpt_path={path}"])
    assert 0 <= float(tested.trainer.callback_metrics["test/alignment"]) <= 4

    state = torch.load(teacher, weights_only=True)
    state["visual.proj"] = state["visual.proj"] * 2
    torch.save(state, teacher)  # the same path now holds another teacher
    with pytest.raises(ValueError, match="trained with teacher"):
        main(["fit", *common, f"--ckpt_path={path}", "--trainer.max_epochs", "2"])


def randomised(model: UnmaskedTeacher, seed: int) -> UnmaskedTeacher:
    """Every weight random (UMT's attention has no key bias), so a wrong mapping cannot pass by chance."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
            if name.endswith("attn.in_proj_bias"):
                param[param.shape[0] // 3 : 2 * param.shape[0] // 3] = 0
    return model


def assert_same_weights(model: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == source.keys()
    for name, value in source.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)


def test_init_from_a_released_stage_one_file_gives_the_source_weights(teacher_file, tmp_path):
    from vfm.models.convert_umt import export_umt

    source = randomised(recipe(teacher_file), seed=1)
    released = export_umt(source.state_dict(), stage=1)
    assert "encoder.blocks.0.attn.q_bias" in released and "clip_decoder.1.head.weight" in released
    released["encoder.patch_embed.proj.bias"] = torch.zeros(32)  # in the releases; VideoViT has none
    path = tmp_path / "umt_stage1.pth"
    torch.save({"model": released}, path)  # the released files are wrapped
    model = recipe(teacher_file, init_from=str(path))
    model.setup("fit")
    assert_same_weights(model, source.state_dict())


@pytest.fixture(scope="module")
def stage_one_run(umt_shards, teacher_file, tmp_path_factory) -> tuple[list[str], str]:
    """The command-line arguments of a tiny stage-1 run and the last.ckpt of its one epoch."""
    common = cli_args(umt_shards, teacher_file, tmp_path_factory.mktemp("stage_one"))
    fit = main(["fit", *common, "--trainer.max_epochs", "1"])
    return common, fit.trainer.checkpoint_callback.last_model_path


def test_init_from_a_vfm_checkpoint_through_the_cli_and_not_over_a_resumed_run(stage_one_run, teacher_file, tmp_path):
    common, path = stage_one_run
    trained = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    fit = main(["fit", *common, f"--model.init_from={path}", "--trainer.max_steps", "0"])
    assert_same_weights(fit.model, trained)

    other = tmp_path / "other.pth"
    torch.save({"model": randomised(recipe(teacher_file), seed=2).state_dict()}, other)
    # resuming the finished epoch restores the checkpoint: init_from is read first, then overwritten
    resumed = main(["fit", *common, f"--model.init_from={other}", f"--ckpt_path={path}", "--trainer.max_epochs", "1"])
    assert resumed.model.hparams.init_from == str(other)
    assert_same_weights(resumed.model, trained)


def test_model_arguments_given_at_test_time_apply_over_the_checkpoint(stage_one_run):
    common, path = stage_one_run
    tested = main(["test", *common, f"--ckpt_path={path}", "--model.mask_ratio", "0.5", "--model.mask_mode=random"])
    hparams = tested.model.hparams
    assert (hparams.mask_ratio, hparams.mask_mode) == (0.5, "random")  # given now
    assert hparams.student["width"] == 32 and hparams.lr_reference_batch == 256  # from the checkpoint
    default = main(["test", *common, f"--ckpt_path={path}"])
    assert (default.model.hparams.mask_ratio, default.model.hparams.mask_mode) == (0.8, "attention")
