"""Re-ranking retrieval results with a matching head: the top k of each query by similarity are re-scored.

UMT (like ALBEF) ranks every item by the contrastive similarity, then scores only the k best items of each
query with the cross-modal matching head, which is far costlier per pair. Items outside the top k keep their
order, below all re-scored ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# below any matching score (log-probabilities are <= 0) while keeping the similarity order of the rest
OUTSIDE_TOP_K = -1.0e4


def rerank_top_k(
    similarity: torch.Tensor,
    k: int,
    score_pairs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    chunk: int = 256,
) -> torch.Tensor:
    """A new [Q, N] score matrix: `score_pairs(query_index, item_index)` [m] on each query's top k, the rest
    pushed below them.

    `score_pairs` is called on chunks of at most `chunk` (query, item) pairs.
    """
    k = min(k, similarity.shape[1])
    top = similarity.topk(k, dim=1).indices  # [Q, k]
    queries = torch.arange(similarity.shape[0], device=similarity.device)[:, None].expand_as(top).flatten()
    items = top.flatten()
    scores = torch.cat([score_pairs(queries[i : i + chunk], items[i : i + chunk]) for i in range(0, len(items), chunk)])
    reranked = similarity.float() + OUTSIDE_TOP_K
    reranked[queries, items] = scores.float().to(reranked.device)
    return reranked
