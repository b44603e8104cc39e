"""The UMT speed comparison's vfm side takes a finite step at the tiny size (the official code is not needed)."""

from __future__ import annotations

import torch

from vfm.bench import umt_speed
from vfm.models.masking import num_kept


def test_vfm_keeps_the_official_patch_count():
    for size in umt_speed.SIZES.values():
        kept = num_kept(size.patches, umt_speed.vfm_mask_ratio(size))
        assert kept == size.patches - int(size.patches * 0.8)  # the official engine's N - int(N * mask_ratio)
    assert umt_speed.official_keep(umt_speed.SIZES["base"]) == 40


def test_vfm_side_takes_a_finite_step_at_tiny_size():
    size = umt_speed.SIZES["tiny"]
    video = torch.randn(size.batch_size, size.num_frames, 3, size.image_size, size.image_size)
    step = umt_speed.VfmStep(size, video, bf16=False)
    assert not step.recipe.align.teacher.autocast  # fp32 runs keep the teacher in fp32 too
    before = [p.detach().clone() for p in step.recipe.video.parameters()]
    loss = step.step()
    assert torch.isfinite(loss) and 0 <= float(loss) <= 4
    assert any(not torch.equal(a, b) for a, b in zip(before, step.recipe.video.parameters()))
    result = umt_speed.compare(None, size, "bf16", repeats=1, warmup=0)
    assert result["vfm_s"] > 0 and "official_s" not in result
