"""Video-text matching (VTM): a binary matched / not-matched head over fused text-video features.

Each pair (video i, caption i) is a positive; each video also meets one hard negative caption and each
caption one hard negative video, drawn in proportion to the softmax of the contrastive similarities
(ALBEF / UMT), never among clips that share the caption.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_negative_indices(similarity: torch.Tensor, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a [B, B] video-to-text similarity, one negative caption per video and one negative video per caption."""
    with torch.no_grad():
        same = sample_ids[:, None] == sample_ids[None, :]
        weights = similarity.float().softmax(1).masked_fill(same, 0) + (~same) * 1e-6
        negative_text = torch.multinomial(weights, 1)[:, 0]
        weights = similarity.float().T.softmax(1).masked_fill(same, 0) + (~same) * 1e-6
        negative_video = torch.multinomial(weights, 1)[:, 0]
    return negative_text, negative_video


def matching_pairs(
    similarity: torch.Tensor, sample_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(video index, text index, label) of the 3B pairs: B positives, then B hard negatives of each side."""
    batch = similarity.shape[0]
    rows = torch.arange(batch, device=similarity.device)
    negative_text, negative_video = hard_negative_indices(similarity, sample_ids)
    video = torch.cat([rows, rows, negative_video])
    text = torch.cat([rows, negative_text, rows])
    labels = torch.cat([torch.ones_like(rows), torch.zeros_like(rows), torch.zeros_like(rows)])
    return video, text, labels


def matching_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the 2-way VTM head (logits [N, 2], labels 1 = matched)."""
    return F.cross_entropy(logits.float(), labels)
