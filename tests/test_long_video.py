"""Long-video recipe: any frame count, masking counts, frozen layers, checkpointing, init_from, evaluation."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import numbered_frames, write_shards

from data_prep.video_writer import encode_video_bytes
from vfm.cli import main
from vfm.losses import hard_negative_loss
from vfm.models import VideoViT, per_frame_keep_indices, random_keep_indices, tube_keep_indices
from vfm.models.factory import create_clip
from vfm.recipes.long_video import LongVideoContrastive, freeze_video_layers
from vfm.recipes.optim import build_adamw
from vfm.recipes.time_order import mirror_keep_indices, paired_keep_indices

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PATCHES = 16  # vit-tiny-test: 32 px, patch 8


def tiny_recipe(**overrides) -> LongVideoContrastive:
    settings = dict(model="vit-tiny-test", num_frames=4, temperature_init=0.07)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recipe = LongVideoContrastive(**{**settings, **overrides})
    recipe.log_dict = lambda *args, **kwargs: None  # no trainer attached
    return recipe


def batch(size: int = 4, frames: int = 6) -> dict:
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, 400, (size, 12), generator=generator)
    text[:, 0], text[:, 8], text[:, 9:] = 49406, 49407, 0
    swapped = text.clone()
    swapped[:, [2, 5]] = swapped[:, [5, 2]]
    return {
        "video": torch.randn(size, frames, 3, 32, 32, generator=generator),
        "text": text,
        "text_mask": text != 0,
        "swapped_text": swapped,
        "swapped_text_mask": swapped != 0,
        "reverse_text": text.flip(1),
        "reverse_text_mask": text.flip(1) != 0,
        "caption": [f"caption {i}" for i in range(size)],
    }


@pytest.fixture(scope="module")
def clip() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return create_clip("vit-tiny-test")


@pytest.mark.parametrize("attention", ["joint", "factorized", "frame"])
@pytest.mark.parametrize("frames", [1, 7, 37])
def test_any_frame_count_with_and_without_masking(clip, attention, frames):
    video_vit = VideoViT.from_open_clip(clip.visual, num_frames=16, attention=attention, drop_mode="per_frame")
    video = torch.randn(1, frames, 3, 32, 32)
    assert video_vit.forward_features(video).shape == (1, 1 + frames * PATCHES, 64)
    video_vit.drop_ratio = 0.75
    assert video_vit.train().forward_features(video).shape == (1, 1 + frames * 4, 64)
    assert video_vit(video).shape == (1, 32)


def test_masking_keeps_the_right_count():
    frames, ratio = 9, 0.75
    for sampler in (random_keep_indices, tube_keep_indices, per_frame_keep_indices):
        keep = sampler(3, frames, PATCHES, ratio)
        assert keep.shape == (3, frames * 4), sampler.__name__
        assert all(len(set(row.tolist())) == keep.shape[1] for row in keep)  # no token kept twice
        assert bool((keep.diff(dim=1) > 0).all()) and int(keep.max()) < frames * PATCHES
    frame_of = per_frame_keep_indices(1, frames, PATCHES, ratio)[0] // PATCHES
    assert torch.equal(frame_of.bincount(), torch.full((frames,), 4))  # 4 of 16 in every frame
    positions = per_frame_keep_indices(1, 64, PATCHES, ratio)[0] % PATCHES
    assert positions.unique().numel() == PATCHES  # unlike tube masking, every position is seen somewhere


def test_training_masks_three_quarters_of_any_clip():
    recipe = tiny_recipe(drop_ratio=0.75)
    seen = []
    recipe.video.transformer.resblocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    recipe.train().training_step(batch(frames=10), 0)
    assert seen[0] == (4, 1 + 10 * 4, 64)  # CLS + a quarter of 10 x 16 patches


def test_frozen_layers_are_out_of_the_optimizer_and_unchanged():
    recipe = tiny_recipe(trainable_layers=1, freeze_text=True)
    optimizer = build_adamw(recipe, 1e-2, 0.1, (0.9, 0.98))
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {name for name, p in recipe.named_parameters() if id(p) in in_optimizer}
    last_block_and_head = ("video.transformer.resblocks.1.", "video.ln_post", "video.proj")
    expected = {n for n, _ in recipe.named_parameters() if n.startswith(last_block_and_head)}
    assert trainable == expected | {"vtc.logit_scale.log_scale"}
    before = {name: p.detach().clone() for name, p in recipe.named_parameters()}
    recipe.train().training_step(batch(), 0).backward()
    optimizer.step()
    for name, param in recipe.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in trainable), name
        assert (param.grad is None) == (name not in trainable), name


def test_hard_negatives_cover_swapped_captions_and_reversed_clips():
    anchor = torch.randn(3, 8)
    same = hard_negative_loss(anchor, anchor, anchor.clone(), torch.tensor(100.0))
    assert float(same) == pytest.approx(math.log(2), abs=1e-5)  # a negative equal to the positive: chance
    assert float(hard_negative_loss(anchor, anchor, -anchor, torch.tensor(100.0))) < 1e-6
    recipe = tiny_recipe(hard_negative_weight=1.0, reverse_negatives=0.5)
    logged = {}
    recipe.log_dict = lambda values, **kwargs: logged.update(values)
    data = batch()
    data["swapped_text"] = data["text"].clone()  # identical captions: the caption term is exactly log 2
    recipe.train().training_step(data, 0)
    assert float(logged["train/hard_negative"]) > 0.5 * math.log(2)
    assert float(logged["train/loss"]) == pytest.approx(float(logged["train/vtc"] + logged["train/hard_negative"]))


def test_trainable_layers_are_checked():
    with pytest.raises(ValueError, match="blocks"):
        freeze_video_layers(tiny_recipe().video, 3)


def test_gradient_checkpointing_gives_the_same_gradients(clip):
    video = torch.randn(2, 5, 3, 32, 32)
    keep = random_keep_indices(2, 5, PATCHES, 0.75, generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        video_vit = VideoViT.from_open_clip(clip.visual, num_frames=16)
        video_vit.set_grad_checkpointing(checkpointing)
        video_vit(video, keep).square().sum().backward()
        grads.append({n: p.grad for n, p in video_vit.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_init_from_interpolates_time_and_extends_the_text_context(tmp_path):
    short = tiny_recipe(num_frames=4)
    with torch.no_grad():
        short.video.temporal_embedding.copy_(torch.arange(4.0)[:, None].expand(4, 64))
    path = tmp_path / "short.ckpt"
    torch.save({"state_dict": short.state_dict(), "hyper_parameters": dict(short.hparams)}, path)
    long = tiny_recipe(
        num_frames=16, context_length=48, attention="factorized", drop_mode="per_frame", init_from=str(path)
    )
    long.init_towers(str(path))
    table = long.video.temporal_embedding[:, 0]
    assert table.shape == (16,) and table[0] == 0 and table[-1] == 3 and bool((table.diff() >= 0).all())
    assert long.text.positional_embedding.shape[0] == 48
    data = batch(frames=4)
    with torch.no_grad():  # captions that fit the old context encode exactly as before
        torch.testing.assert_close(long.encode_text(data["text"], None), short.encode_text(data["text"], None))
        long_text = torch.cat([data["text"], torch.zeros(4, 36, dtype=torch.long)], 1)
        assert long.encode_text(long_text, None).shape == (4, 32)
    block = long.video.blocks[0]  # a joint checkpoint into a factorised encoder: temporal = spatial at start
    torch.testing.assert_close(block.temporal_attn.in_proj_weight, block.attn.in_proj_weight)


def test_reversed_copies_keep_the_same_tokens_played_backwards():
    keep = per_frame_keep_indices(2, 5, PATCHES, 0.75)
    mirrored = mirror_keep_indices(keep, 5, PATCHES)
    assert torch.equal(mirror_keep_indices(mirrored, 5, PATCHES), keep)
    tokens = torch.randn(2, 5 * PATCHES, 3)  # [B, T*N, D], frame-major
    backwards = tokens.view(2, 5, PATCHES, 3).flip(1).reshape(2, -1, 3)
    kept = tokens.gather(1, keep[..., None].expand(-1, -1, 3))
    kept_backwards = backwards.gather(1, mirrored[..., None].expand(-1, -1, 3))
    assert torch.equal(kept_backwards.view(2, 5, 4, 3), kept.view(2, 5, 4, 3).flip(1))
    recipe = tiny_recipe(drop_ratio=0.75, drop_mode="per_frame", reverse_negatives=0.5).train()
    video = torch.randn(4, 5, 3, 32, 32)
    both = paired_keep_indices(recipe.video, torch.cat([video, video[:2].flip(1)]), 4)
    assert torch.equal(both[4:], mirror_keep_indices(both[:2], 5, PATCHES))


def test_evaluation_masking_is_repeatable_and_uses_the_swapped_caption():
    recipe = tiny_recipe(eval_drop_ratio=0.3, drop_mode="tube").eval()
    video = batch()["video"]
    with torch.no_grad():
        torch.testing.assert_close(recipe.encode_video(video), recipe.encode_video(video))
        assert not torch.allclose(recipe.encode_video(video), recipe.video(video), atol=1e-4)
    encoded = []
    recipe.encode_text = lambda text, mask: encoded.append(text) or torch.randn(len(text), 32)
    data = batch()
    with torch.no_grad():
        recipe._eval_step(data)
    assert torch.equal(encoded[1], data["swapped_text"])


def test_trailing_padding_changes_no_loss_or_gradient():
    """Captions are cut to the batch's longest before the causal text tower: the same loss and gradients as
    the whole context, also for the hard-negative captions."""
    data = batch()
    padded = dict(data)
    for key in ("text", "swapped_text", "reverse_text"):  # 20 more padding columns, masked out
        padded[key] = torch.cat([data[key], torch.zeros(4, 20, dtype=torch.long)], 1)
        padded[f"{key}_mask"] = padded[key] != 0
    results = []
    for inputs in (data, padded):
        torch.manual_seed(0)
        recipe = tiny_recipe(context_length=32, hard_negative_weight=1.0, drop_ratio=0.5)
        widths: list[int] = []
        recipe.text.register_forward_pre_hook(lambda module, args, seen=widths: seen.append(args[0].shape[1]))
        torch.manual_seed(1)  # the same token draw for both
        loss = recipe.training_step(inputs, 0)
        loss.backward()
        results.append((loss.detach(), recipe.text.transformer.resblocks[0].attn.in_proj_weight.grad.clone()))
        assert widths == [9, 9]  # captions and hard negatives end at column 9 (the EOT at 8): the padding is cut
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    recipe.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            recipe.encode_text(padded["text"], padded["text_mask"]), recipe.text(padded["text"]).embedding
        )


def long_sample(index: int, seconds: int, fps: int = 2) -> dict:
    frames = numbered_frames(seconds * fps, seed=index)
    meta = {
        "caption": f"video {index} first",
        "reverse_caption": f"video {index} last",
        "swapped_caption": f"first video {index}",
    }
    return {"__key__": f"{index:06d}", "mp4": encode_video_bytes(frames, fps=fps), "json": json.dumps(meta).encode()}


def test_short_then_long_stage_through_the_cli(tmp_path):
    shards = tmp_path / "shards"
    write_shards(shards, [long_sample(i, 10 + i) for i in range(8)], 4, "train")
    write_shards(shards, [long_sample(100 + i, 12) for i in range(4)], 4, "val")
    data = {
        "train_shards": str(shards / "train-*.tar"),
        "val_shards": str(shards / "val-*.tar"),
        "image_size": 32,
        "batch_size": 4,
        "num_workers": 0,
        "samples_per_epoch": 4,
        "context_length": 32,
    }
    trainer = {"precision": "32-true", "max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False}
    common = ["--model.model=vit-tiny-test", "--model.context_length=32"]
    common += [f"--data.{k}={v}" for k, v in data.items()] + [f"--trainer.{k}={v}" for k, v in trainer.items()]
    no_val = "--trainer.limit_val_batches=0"
    short = main(["fit", "--config", str(CONFIGS / "long_video.yaml"), *common, "--model.num_frames=4",
                  "--data.num_frames=4", no_val, f"--trainer.default_root_dir={tmp_path}/short",
                  f"--checkpoint.dirpath={tmp_path}/short"])  # fmt: skip
    checkpoint = short.trainer.checkpoint_callback.last_model_path
    long_args = ["--config", str(CONFIGS / "long_video_long.yaml"), *common, "--model.num_frames=16",
                 "--data.num_frames=16", "--model.trainable_layers=1", "--model.hard_negative_weight=1",
                 f"--model.init_from={checkpoint}", f"--trainer.default_root_dir={tmp_path}/long"]  # fmt: skip
    long = main(["fit", *long_args, no_val])
    assert long.model.video.grad_checkpointing and long.trainer.global_step == 1
    assert not long.model.video.conv1.weight.requires_grad
    last = long.trainer.checkpoint_callback.last_model_path
    tested = main(["test", *long_args, f"--ckpt_path={last}"])
    metrics = {k: float(v) for k, v in tested.trainer.callback_metrics.items()}
    assert metrics["test/num_samples"] == 4 and 0 <= metrics["test/temporal_text_acc"] <= 1
    assert metrics["test/chance_r1"] == pytest.approx(0.25)
    zero_shot = main(["test", *long_args, f"--model.init_from={last}"])  # no --ckpt_path: init_from is evaluated
    assert {k: float(v) for k, v in zero_shot.trainer.callback_metrics.items()} == pytest.approx(metrics)
