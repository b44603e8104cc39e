"""The student's alignment heads of Unmasked Teacher: one Linear + LayerNorm per aligned layer.

Names follow the released checkpoints (``clip_decoder.{k}.head`` / ``.norm``). As in the official code, the
student's tokens pass its final norm, then get their fixed position embedding added once more (the teacher's
tokens carry CLIP's positions; the heads see the student's), then a head; the loss normalises the result.
"""

from __future__ import annotations

import torch
from torch import nn

from .masking import gather_tokens
from .video_vit import VideoViT


class AlignmentHead(nn.Module):
    def __init__(self, width: int, teacher_dim: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.head = nn.Linear(width, teacher_dim)
        self.norm = nn.LayerNorm(teacher_dim, eps=norm_eps)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(x))


class AlignmentHeads(nn.Module):
    """K heads mapping the student's last K layers (kept tokens) to the teacher's feature space."""

    def __init__(self, num_layers: int, width: int, teacher_dim: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.heads = nn.ModuleList(AlignmentHead(width, teacher_dim, norm_eps) for _ in range(num_layers))

    def __len__(self) -> int:
        return len(self.heads)

    def forward(
        self, student: VideoViT, layers: list[torch.Tensor], video: torch.Tensor, keep: torch.Tensor | None
    ) -> torch.Tensor:
        """Student outputs of the last K blocks [B, P + N_keep, D] -> head outputs [K, B, N_keep, C]."""
        if len(layers) != len(self.heads):
            raise ValueError(f"{len(layers)} student layers for {len(self.heads)} alignment heads")
        positions = patch_positions(student, video, keep, layers[0])
        prefix = student.num_prefix_tokens
        return torch.stack(
            [head(student.ln_post(tokens[:, prefix:]) + positions) for head, tokens in zip(self.heads, layers)]
        )


def patch_positions(student: VideoViT, video: torch.Tensor, keep: torch.Tensor | None, ref: torch.Tensor):
    """The student's position embedding of its (kept) patch tokens: [B, N_keep, D] (or [1, T*N, D])."""
    frames = video.shape[1]
    grid = (video.shape[-2] // student.patch_size, video.shape[-1] // student.patch_size)
    _, spatial, temporal = student._position_embeddings(frames, grid, ref)
    table = (temporal[:, None] + spatial[None]).flatten(0, 1)[None]  # [1, T*N, D]
    if keep is None:
        return table
    return gather_tokens(table.expand(keep.shape[0], -1, -1), keep)
