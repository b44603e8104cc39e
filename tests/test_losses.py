"""VTC (single process, same-caption positives, 2-rank gloo DDP equivalence), temperature, MLM."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from vfm.losses import LogitScale, VideoTextContrastiveLoss, masked_lm_loss, video_text_contrastive_loss

WORLD_SIZE = 2


def make_batch(size: int = 8, dim: int = 16):
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(size, dim, generator=generator)
    text = torch.randn(size, dim, generator=generator)
    ids = torch.tensor([0, 1, 2, 1, 4, 5, 4, 7])[:size]  # samples 1&3 and 4&6 share a caption
    return video, text, ids


def reference_loss(video, text, scale, ids):
    """Naive per-row loop: soft cross-entropy, target uniform over the same-id samples."""
    video, text = F.normalize(video, dim=-1), F.normalize(text, dim=-1)
    total = 0.0
    for i in range(len(ids)):
        positives = (ids == ids[i]).float() / (ids == ids[i]).sum()
        total -= (positives * (scale * video[i] @ text.T).log_softmax(0)).sum()
        total -= (positives * (scale * text[i] @ video.T).log_softmax(0)).sum()
    return total / (2 * len(ids))


def test_vtc_matches_naive_reference_and_reduces_to_infonce():
    video, text, ids = make_batch()
    scale = torch.tensor(20.0)
    torch.testing.assert_close(
        video_text_contrastive_loss(video, text, scale, ids), reference_loss(video, text, scale, ids)
    )
    distinct = torch.arange(8)
    torch.testing.assert_close(
        video_text_contrastive_loss(video, text, scale, distinct),
        video_text_contrastive_loss(video, text, scale),
    )


def test_logit_scale_starts_at_temperature_one_hundredth_and_is_clamped():
    loss = VideoTextContrastiveLoss()
    assert loss.logit_scale().item() == pytest.approx(100.0)
    assert loss.logit_scale.temperature == pytest.approx(0.01)
    with torch.no_grad():
        loss.logit_scale.log_scale.fill_(math.log(1000.0))
    assert loss.logit_scale().item() == pytest.approx(100.0)
    video, text, ids = make_batch()
    loss(video, text, ids).backward()
    assert loss.logit_scale.log_scale.grad is not None
    assert LogitScale(init_scale=1 / 0.07, max_scale=1000.0, min_scale=2.0)().item() == pytest.approx(1 / 0.07)


def test_mlm_loss_matches_reference_on_masked_positions_only():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=generator)
    labels = torch.tensor([[-100, 3, -100, 7, -100], [1, -100, -100, -100, 10]])
    expected = torch.stack(
        [-logits[b, t].log_softmax(-1)[labels[b, t]] for b in range(2) for t in range(5) if labels[b, t] != -100]
    ).mean()
    torch.testing.assert_close(masked_lm_loss(logits, labels), expected)
    torch.testing.assert_close(masked_lm_loss(logits[labels != -100], labels), expected)
    empty = masked_lm_loss(logits.requires_grad_(), torch.full((2, 5), -100))
    assert empty.item() == 0.0
    empty.backward()


def _rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        video, text, ids = make_batch()
        rows = slice(rank * 4, rank * 4 + 4)
        local_video = video[rows].clone().requires_grad_()
        local_text = text[rows].clone().requires_grad_()
        loss = video_text_contrastive_loss(local_video, local_text, torch.tensor(20.0), ids[rows])
        loss.backward()

        # a real DDP module: its averaged parameter gradient must equal the single-process one
        torch.manual_seed(0)
        model = DistributedDataParallel(torch.nn.Linear(16, 16))
        ddp_loss = video_text_contrastive_loss(model(video[rows]), text[rows], torch.tensor(20.0), ids[rows])
        ddp_loss.backward()
        result = {
            "loss": loss.detach(),
            "video_grad": local_video.grad,
            "text_grad": local_text.grad,
            "weight_grad": model.module.weight.grad,
        }
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_vtc_under_two_rank_ddp_equals_single_process_whole_batch(tmp_path):
    context = mp.start_processes(
        _rank_worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish within 120 s")

    video, text, ids = make_batch()
    video.requires_grad_()
    text.requires_grad_()
    loss = video_text_contrastive_loss(video, text, torch.tensor(20.0), ids)
    loss.backward()
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 16)
    video_text_contrastive_loss(linear(video.detach()), text.detach(), torch.tensor(20.0), ids).backward()

    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(rank * 4, rank * 4 + 4)
        torch.testing.assert_close(result["loss"], loss.detach())
        # each rank's gradient is world_size x its share of the global loss's gradient; DDP divides by it
        torch.testing.assert_close(result["video_grad"] / WORLD_SIZE, video.grad[rows])
        torch.testing.assert_close(result["text_grad"] / WORLD_SIZE, text.grad[rows])
        torch.testing.assert_close(result["weight_grad"], linear.weight.grad)


def test_vtc_is_computed_in_fp32_under_autocast():
    video, text, ids = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = video_text_contrastive_loss(video.bfloat16(), text.bfloat16(), torch.tensor(100.0), ids)
    assert loss.dtype == torch.float32
    expected = video_text_contrastive_loss(video.bfloat16().float(), text.bfloat16().float(), torch.tensor(100.0), ids)
    torch.testing.assert_close(loss, expected)
