"""Losses of the vfm recipes, one per file; no Lightning here."""

from .contrastive import (
    LogitScale,
    VideoTextContrastiveLoss,
    contrastive_targets,
    gather_with_grad,
    video_text_contrastive_loss,
)
from .hard_negatives import hard_negative_loss
from .mlm import masked_lm_loss

__all__ = [
    "LogitScale",
    "VideoTextContrastiveLoss",
    "contrastive_targets",
    "gather_with_grad",
    "hard_negative_loss",
    "masked_lm_loss",
    "video_text_contrastive_loss",
]
