"""Unmasked Teacher's distillation step (arXiv 2303.16058) as a plain module: teacher pass, semantic
masking, alignment heads and loss. Both UMT stages use it; the recipes own the student and the schedule.

Semantic masking: per frame keep (1 - mask_ratio) of the patches, drawn without replacement in proportion to
the teacher's last-layer CLS attention (`weighted_keep_indices`: Gumbel top-k, one batched draw on the device,
no host sync). `random`, `tube` and `per_frame` masks are the alternatives.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

from vfm.losses.alignment import alignment_loss

from .alignment_heads import AlignmentHeads
from .masking import sample_keep_indices, weighted_keep_indices
from .teacher import FrozenTeacher
from .video_vit import VideoViT

MaskMode = Literal["attention", "random", "tube", "per_frame"]


class Distillation(NamedTuple):
    keep: torch.Tensor  # [B, N_keep] kept patch indices (frame-major)
    targets: torch.Tensor  # [K, B, N_keep, C] normalised teacher features of the kept tokens


class TeacherAlignment(nn.Module):
    """The frozen teacher plus the student's alignment heads (`heads`, the only trained part here)."""

    def __init__(self, teacher: FrozenTeacher, student_width: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.teacher = teacher  # holds no parameters or state: see FrozenTeacher
        self.heads = AlignmentHeads(teacher.num_layers, student_width, teacher.output_dim, norm_eps)

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def distill_targets(self, video: torch.Tensor, mask_ratio: float, mode: MaskMode = "attention") -> Distillation:
        """One teacher pass: which tokens the student keeps, and their targets."""
        output = self.teacher(video)
        batch, frames, patches = output.cls_attention.shape
        if mode == "attention":
            keep = weighted_keep_indices(output.cls_attention, mask_ratio)
        else:
            keep = sample_keep_indices(mode, batch, frames, patches, mask_ratio, device=video.device)
        return Distillation(keep, self.teacher.targets(output.layers, keep))

    def loss(
        self, student: VideoViT, layers: list[torch.Tensor], video: torch.Tensor, distill: Distillation
    ) -> torch.Tensor:
        """2 - 2 cos between the heads' outputs on the student's last K layers and the teacher's targets."""
        return alignment_loss(self.heads(student, layers, video, distill.keep), distill.targets)

    def check_student(self, student: VideoViT, image_size: int | tuple[int, int]) -> None:
        """The student must see the teacher's patch grid (masks and targets index the same patches)."""
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        grid = (size[0] // student.patch_size, size[1] // student.patch_size)
        if grid != self.teacher.grid_size:
            raise ValueError(
                f"student patch grid {grid} at {size} px differs from the teacher's {self.teacher.grid_size} "
                f"at {self.teacher.image_size} px: pick a student patch size / resolution with the same grid"
            )
        if self.num_layers > len(student.blocks):
            raise ValueError(f"{self.num_layers} aligned layers but the student has {len(student.blocks)} blocks")
