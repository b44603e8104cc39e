"""Token-dropping samplers: counts, sortedness, tube structure, determinism, weighting."""

from __future__ import annotations

import pytest
import torch

from vfm.models import (
    gather_tokens,
    num_kept,
    random_keep_indices,
    sample_keep_indices,
    tube_keep_indices,
    weighted_keep_indices,
)


@pytest.mark.parametrize("drop_ratio", [0.0, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("num_frames", [1, 4, 8])
def test_random_keeps_the_right_number_of_distinct_sorted_tokens(drop_ratio, num_frames):
    keep = random_keep_indices(3, num_frames, 196, drop_ratio)
    assert keep.shape == (3, num_kept(num_frames * 196, drop_ratio))
    assert (keep.diff(dim=1) > 0).all()
    assert keep.min() >= 0 and keep.max() < num_frames * 196


def test_ratio_zero_keeps_everything_in_order():
    torch.testing.assert_close(random_keep_indices(2, 4, 16, 0.0), torch.arange(64).expand(2, -1))


def test_tube_keeps_the_same_positions_in_every_frame():
    keep = tube_keep_indices(2, 5, 196, 0.75)
    assert keep.shape == (2, 5 * 49)
    per_frame = keep.view(2, 5, 49)
    positions = per_frame % 196
    assert (positions == positions[:, :1]).all()
    assert ((per_frame // 196) == torch.arange(5)[None, :, None]).all()
    assert (keep.diff(dim=1) > 0).all()
    assert not torch.equal(positions[0, 0], positions[1, 0])  # drawn per sample


def test_samplers_are_deterministic_given_a_generator():
    first = sample_keep_indices("random", 2, 4, 16, 0.5, generator=torch.Generator().manual_seed(7))
    second = sample_keep_indices("random", 2, 4, 16, 0.5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, second)
    with pytest.raises(ValueError, match="unknown drop mode"):
        sample_keep_indices("checkerboard", 2, 4, 16, 0.5)
    with pytest.raises(ValueError, match="drop_ratio"):
        num_kept(10, 1.0)


def test_weighted_sampling_keeps_per_frame_counts_and_follows_weights():
    weights = torch.zeros(64, 3, 10)
    weights[..., :4] = 1.0  # only 4 positions of each frame carry weight
    keep = weighted_keep_indices(weights, drop_ratio=0.7, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (64, 9)
    assert ((keep.view(64, 3, 3) // 10) == torch.arange(3)[None, :, None]).all()
    assert ((keep % 10) < 4).all()  # zero-weight patches are never drawn while weighted ones remain


def test_weighted_sampling_is_proportional():
    weights = torch.tensor([8.0, 1.0, 1.0]).expand(20000, 1, 3)
    keep = weighted_keep_indices(weights, drop_ratio=2 / 3, generator=torch.Generator().manual_seed(0))
    frequency = torch.bincount(keep.flatten(), minlength=3).float() / keep.numel()
    torch.testing.assert_close(frequency, torch.tensor([0.8, 0.1, 0.1]), atol=0.015, rtol=0)


def test_gather_tokens_selects_rows():
    tokens = torch.arange(2 * 6 * 3).view(2, 6, 3)
    keep = torch.tensor([[0, 5], [2, 3]])
    gathered = gather_tokens(tokens, keep)
    torch.testing.assert_close(gathered[1, 0], tokens[1, 2])
    assert gathered.shape == (2, 2, 3)
