"""Unmasked-teacher alignment (UTA): student tokens against the frozen teacher's, 2 - 2 cos per token."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 2 - 2 cos over layers, samples and visible tokens: inputs [K, B, N, C] (or any [..., C]).

    Both sides are L2-normalised here (the teacher's targets already are; normalising twice is harmless), so
    the value is the squared distance of unit vectors: 0 for aligned tokens, 2 for orthogonal ones.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} features differ")
    student = F.normalize(student.float(), dim=-1)
    teacher = F.normalize(teacher.float(), dim=-1)
    return (2 - 2 * (student * teacher).sum(-1)).mean()
