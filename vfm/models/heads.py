"""What a classification head reads from a video encoder (pure functions; no parameters here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .video_vit import VideoViT


def grid_features(
    video_tower: VideoViT, tokens: torch.Tensor, video_shape: torch.Size, grid: tuple[int, int]
) -> torch.Tensor:
    """The final token map averaged over the cells of a (time, height, width) grid, cells kept apart.

    `tokens` [B, P + T*h*w, D] come from `forward_features` without dropping; the result is
    [B, D * grid[0] * grid[1] ** 2]. Pooling to one vector (CLS or mean) keeps *what* is in a clip; the grid
    also keeps *where and when*, which is what motion classes (left vs right, grow vs shrink) differ in.
    """
    batch, frames = video_shape[0], video_shape[1]
    height, width = video_shape[-2] // video_tower.patch_size, video_shape[-1] // video_tower.patch_size
    patches = tokens[:, video_tower.num_prefix_tokens :]
    if patches.shape[1] != frames * height * width:
        raise ValueError(f"grid features need every token ({frames * height * width}), got {patches.shape[1]}")
    patches = video_tower.ln_post(patches).reshape(batch, frames, height, width, -1).permute(0, 4, 1, 2, 3)
    return F.adaptive_avg_pool3d(patches, (grid[0], grid[1], grid[1])).flatten(1)


def grid_feature_dim(video_tower: VideoViT, grid: tuple[int, int]) -> int:
    return video_tower.width * grid[0] * grid[1] ** 2


def head_features(
    video_tower: VideoViT, video: torch.Tensor, features: str = "pre_logits", grid: tuple[int, int] = (4, 2)
) -> torch.Tensor:
    """What a classifier reads: ``pre_logits`` (pooled, encoder width), the projected ``embedding``, or
    ``grid`` features (see `grid_features`)."""
    tokens = video_tower.forward_features(video)
    if features == "grid":
        return grid_features(video_tower, tokens, video.shape, grid)
    if features not in ("pre_logits", "embedding"):
        raise ValueError(f"unknown head features {features!r}: use pre_logits, embedding or grid")
    return video_tower.forward_head(tokens, pre_logits=features == "pre_logits")


def head_feature_dim(video_tower: VideoViT, features: str = "pre_logits", grid: tuple[int, int] = (4, 2)) -> int:
    if features == "grid":
        return grid_feature_dim(video_tower, grid)
    if features == "embedding" and video_tower.output_dim:
        return video_tower.output_dim
    return video_tower.width
