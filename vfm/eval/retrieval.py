"""Text-to-video and video-to-text retrieval metrics: R@1/5/10, median and mean rank.

A query counts as answered at rank r when its best-scored correct item is the r-th result; clips whose
captions are identical are all correct answers for each other (the embedded corpus repeats captions).
The hit rate at k is torchmetrics' ``retrieval_hit_rate`` definition, computed here for all queries at
once from the rank of the first correct item (one pass over the similarity matrix instead of one call
per query, which matters at 10k x 10k).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def caption_positives(query_captions: list[str], item_captions: list[str]) -> torch.Tensor:
    """Bool [Q, N]: item n is a correct answer for query q when their captions are the same text."""
    ids: dict[str, int] = {}
    query = torch.tensor([ids.setdefault(c, len(ids)) for c in query_captions])
    items = torch.tensor([ids.setdefault(c, len(ids)) for c in item_captions])
    return query[:, None] == items[None, :]


def first_positive_rank(similarity: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best-scored positive of each query (row); ties count against the query."""
    best_positive = similarity.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values
    negatives_above = ((similarity >= best_positive) & ~positives).sum(dim=1)
    return negatives_above + 1


def _direction_metrics(similarity: torch.Tensor, positives: torch.Tensor, prefix: str) -> dict[str, float]:
    ranks = first_positive_rank(similarity.float(), positives).float()
    metrics = {f"{prefix}_r{k}": (ranks <= k).float().mean().item() for k in (1, 5, 10)}
    metrics[f"{prefix}_median_rank"] = ranks.median().item()
    metrics[f"{prefix}_mean_rank"] = ranks.mean().item()
    return metrics


def retrieval_metrics(similarity: torch.Tensor, positives: torch.Tensor) -> dict[str, float]:
    """``similarity`` [N_text, N_video] and ``positives`` (same shape) -> t2v_* and v2t_* metrics."""
    if similarity.shape != positives.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and positives {tuple(positives.shape)} differ")
    if not positives.any(dim=1).all() or not positives.any(dim=0).all():
        raise ValueError("every text and every video needs at least one correct match")
    return {**_direction_metrics(similarity, positives, "t2v"), **_direction_metrics(similarity.T, positives.T, "v2t")}


def chance_recall_at_1(positives: torch.Tensor) -> float:
    """Expected text-to-video R@1 of a random ranking: mean share of correct items per query."""
    return positives.float().mean(dim=1).mean().item()


def gather_embeddings(tensor: torch.Tensor) -> torch.Tensor:
    """All-gathers rows from every rank, where ranks may hold different numbers of rows (no gradient)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)])
