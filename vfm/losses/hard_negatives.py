"""Hard negatives for the order of events: a caption against its clip and the clip played backwards, a clip
against its caption and the caption with two events swapped. In-batch negatives almost never differ only in
order, so the plain contrastive loss barely teaches it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_negative_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """InfoNCE of each anchor over its positive and its own hard negatives (no other samples).

    Args:
        anchor, positive: embeddings [B, D] (row i of each belongs together), e.g. a clip and its caption.
        negatives: [B, D] (one hard negative per anchor) or [B, K, D], e.g. the event-swapped caption.
        logit_scale: inverse temperature, e.g. the contrastive loss's own.
    """
    if negatives.ndim == 2:
        negatives = negatives[:, None]
    anchor, positive, negatives = (F.normalize(x.float(), dim=-1) for x in (anchor, positive, negatives))
    positive_score = (anchor * positive).sum(-1, keepdim=True)
    negative_scores = torch.einsum("bd,bkd->bk", anchor, negatives)
    logits = logit_scale.float() * torch.cat([positive_score, negative_scores], 1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
