"""Token dropping: which patch tokens of a clip the encoder sees.

Every sampler returns the sorted indices of the kept patch tokens, long [B, N_keep], into the clip's patch
tokens flattened frame-major (index = t * patches_per_frame + p). The CLS token is not indexed: the encoder
always keeps it. The encoder gathers the kept tokens, so dropped tokens cost no compute.
"""

from __future__ import annotations

from typing import Literal

import torch

DropMode = Literal["random", "tube", "per_frame"]


def num_kept(num_tokens: int, drop_ratio: float) -> int:
    """How many of `num_tokens` survive dropping `drop_ratio` of them (at least one)."""
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio}")
    return max(1, round(num_tokens * (1.0 - drop_ratio)))


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | None):
    if generator is not None:
        # the noise is drawn on the generator's device so that a CPU generator stays deterministic
        return torch.rand(shape, generator=generator, device=generator.device).to(device)
    return torch.rand(shape, device=device)


def random_keep_indices(
    batch_size: int,
    num_frames: int,
    patches_per_frame: int,
    drop_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Keep a uniformly random subset of all T x N patch tokens, drawn independently per sample."""
    total = num_frames * patches_per_frame
    noise = _uniform((batch_size, total), generator, device)
    keep = noise.topk(num_kept(total, drop_ratio), dim=1).indices
    return keep.sort(dim=1).values


def tube_keep_indices(
    batch_size: int,
    num_frames: int,
    patches_per_frame: int,
    drop_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Keep the same random spatial positions in every frame (tube masking), drawn per sample."""
    spatial = random_keep_indices(batch_size, 1, patches_per_frame, drop_ratio, generator, device)
    offsets = torch.arange(num_frames, device=spatial.device) * patches_per_frame
    return (offsets[None, :, None] + spatial[:, None, :]).flatten(1)


def per_frame_keep_indices(
    batch_size: int,
    num_frames: int,
    patches_per_frame: int,
    drop_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Keep the same number of random patches in every frame, at positions drawn anew per frame.

    Random masking that frame-wise and factorised attention accept (they need a balanced count per frame),
    without tube masking's blind spots: every position is seen in some frames.
    """
    noise = _uniform((batch_size, num_frames, patches_per_frame), generator, device)
    keep = noise.topk(num_kept(patches_per_frame, drop_ratio), dim=-1).indices.sort(dim=-1).values
    offsets = torch.arange(num_frames, device=keep.device) * patches_per_frame
    return (keep + offsets[None, :, None]).flatten(1)


def weighted_keep_indices(
    weights: torch.Tensor,
    drop_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per frame, keep patches sampled without replacement in proportion to `weights` [B, T, N].

    The attention-guided masking of UMT (drop_ratio 0.8): `weights` is the teacher's CLS-to-patch attention,
    e.g. `VideoViT.last_cls_attention`. Gumbel top-k (top-k of log w + Gumbel noise) draws the same
    distribution as successive `torch.multinomial` draws without replacement, for the whole batch at once.
    Every frame keeps the same count, so the result also suits frame-wise and factorised attention. Zero
    weights are never kept while positive ones remain.
    """
    batch, frames, patches = weights.shape
    keep = num_kept(patches, drop_ratio)
    uniform = _uniform(tuple(weights.shape), generator, weights.device).clamp_(1e-20, 1.0)
    gumbel = -torch.log(-torch.log(uniform))
    scores = torch.log(weights.float().clamp_min(0)) + gumbel
    per_frame = scores.topk(keep, dim=-1).indices.sort(dim=-1).values
    offsets = torch.arange(frames, device=weights.device) * patches
    return (per_frame + offsets[None, :, None]).flatten(1)


def sample_keep_indices(
    mode: DropMode,
    batch_size: int,
    num_frames: int,
    patches_per_frame: int,
    drop_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Dispatch to the `random`, `tube` or `per_frame` sampler by name (the config value)."""
    samplers = {"random": random_keep_indices, "tube": tube_keep_indices, "per_frame": per_frame_keep_indices}
    if mode not in samplers:
        raise ValueError(f"unknown drop mode {mode!r}; choose one of {sorted(samplers)}")
    return samplers[mode](batch_size, num_frames, patches_per_frame, drop_ratio, generator, device)


def gather_tokens(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Select `keep` [B, K] along dim 1 of `tokens` [B, L, D] -> [B, K, D]."""
    return tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))


def per_frame_count(keep: torch.Tensor, num_frames: int, patches_per_frame: int) -> int:
    """Tokens kept per frame when every frame keeps the same number; raises otherwise.

    Frame-wise and factorised attention reshape the kept tokens to [B, T, K], which needs this balance;
    `tube_keep_indices`, `per_frame_keep_indices` and `weighted_keep_indices` guarantee it,
    `random_keep_indices` does not.
    """
    if keep.shape[1] % num_frames == 0:
        per_frame = keep.shape[1] // num_frames
        frame_of = (keep // patches_per_frame).view(keep.shape[0], num_frames, per_frame)
        expected = torch.arange(num_frames, device=keep.device)[None, :, None]
        if bool((frame_of == expected).all()):
            return per_frame
    raise ValueError(
        "frame-wise and factorised attention need the same number of kept tokens in every frame: "
        "use drop_mode='tube' or 'per_frame', or weighted_keep_indices"
    )
