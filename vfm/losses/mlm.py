"""Masked language modelling loss: cross-entropy on the masked positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over positions whose label is not `IGNORE_INDEX`.

    `logits` is either [B, L, V] for all positions of `labels` [B, L], or [M, V] already restricted to the
    M masked positions (as `CrossModalFusion.mlm_logits(fused, labels)` returns). A batch without any
    masked token gives a zero loss that still backpropagates (cross-entropy alone would return NaN).
    """
    selected = labels != IGNORE_INDEX
    targets = labels[selected]
    if logits.shape[:-1] == labels.shape:
        logits = logits[selected]
    elif logits.shape[0] != targets.numel():
        raise ValueError(
            f"logits {tuple(logits.shape)} match neither labels {tuple(labels.shape)} nor "
            f"its {targets.numel()} masked positions"
        )
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets)
