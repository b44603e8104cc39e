"""Video-text matching (VTM): a binary matched / not-matched head over fused text-video features.

Each pair (video i, caption i) is a positive; each video also meets one hard negative caption and each
caption one hard negative video, drawn in proportion to the softmax of the contrastive similarities
(ALBEF / UMT), never among clips that share the caption.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .contrastive import gather_no_grad


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


def sample_hard_negatives(
    similarity: torch.Tensor, row_ids: torch.Tensor, column_ids: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One column per row, drawn from softmax(similarity) among columns whose id differs from the row's.

    `similarity` [b, N] may compare this rank's b queries with the N candidates of the global batch. A row
    whose candidates all share its id (nothing to contrast) draws uniformly instead of failing.
    """
    with torch.no_grad():
        same = row_ids[:, None] == column_ids[None, :]
        weights = similarity.float().softmax(1).masked_fill(same, 0)
        weights = weights + (~same) * 1e-6  # a softmax that underflows still leaves every negative drawable
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))
        return torch.multinomial(weights, 1, generator=generator)[:, 0]


def global_hard_negatives(
    video: torch.Tensor, text: torch.Tensor, sample_ids: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard negatives from the whole (all-gathered) batch: indices into the gathered batch of
    (a caption for each local video, a video for each local caption).

    Under DDP a rank's b samples are rows rank*b ... rank*b + b - 1 of the gathered batch, so the indices
    select from tensors gathered the same way (`gather_with_grad` for features that need gradients). On one
    process this is ALBEF / UMT's in-batch sampling.
    """
    with torch.no_grad():
        video, text = F.normalize(video.float(), dim=-1), F.normalize(text.float(), dim=-1)
        all_video, all_text, all_ids = gather_no_grad(video), gather_no_grad(text), gather_no_grad(sample_ids)
        scale = logit_scale.float()
        negative_text = sample_hard_negatives(scale * video @ all_text.T, sample_ids, all_ids)
        negative_video = sample_hard_negatives(scale * text @ all_video.T, sample_ids, all_ids)
    return negative_text, negative_video
