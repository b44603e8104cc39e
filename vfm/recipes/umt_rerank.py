"""Evaluation-time store for UMT's VTM re-ranking: embeddings and token features of every eval sample."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vfm.eval import caption_positives, gather_embeddings, retrieval_metrics
from vfm.eval.rerank import rerank_top_k
from vfm.recipes.retrieval_eval import _gather_strings

RERANKED_KEYS = ("r1", "r5", "r10", "median_rank")


class RerankStore:
    """Collects per-batch tensors; `reranked_metrics` gathers them over ranks and scores the top k pairs.

    Every rank re-ranks the whole gathered set (the same numbers everywhere, no further reduction).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tensors: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.captions: list[str] = []

    def __len__(self) -> int:
        return len(self.captions)

    def add(self, captions: list[str], video_embedding, text_embedding, video_tokens, text_features, text_mask):
        self.captions.extend(captions)
        for name, value in (
            ("video", F.normalize(video_embedding.float(), dim=-1)),
            ("text", F.normalize(text_embedding.float(), dim=-1)),
            ("tokens", video_tokens),
            ("features", text_features),
            ("mask", text_mask),
        ):
            self.tensors[name].append(value.detach())

    @torch.no_grad()
    def reranked_metrics(self, matching_logits: Callable, k: int) -> dict[str, float]:
        """t2v / v2t R@1/5/10 and median rank after re-ranking each query's top k by the VTM head."""
        data = {name: gather_embeddings(torch.cat(parts)) for name, parts in self.tensors.items()}
        captions = _gather_strings(self.captions)
        self.reset()
        positives = caption_positives(captions, captions).to(data["video"].device)
        similarity = data["text"] @ data["video"].T  # [texts, videos]

        def matched(text_index: torch.Tensor, video_index: torch.Tensor) -> torch.Tensor:
            text, mask, video = data["features"][text_index], data["mask"][text_index], data["tokens"][video_index]
            logits = matching_logits(text, mask, video)
            return logits.float().log_softmax(-1)[:, 1]

        t2v = rerank_top_k(similarity, k, matched)
        v2t = rerank_top_k(similarity.T, k, lambda video, text: matched(text, video))
        metrics = {k_: v for k_, v in retrieval_metrics(t2v, positives).items() if k_.startswith("t2v")}
        metrics |= {k_: v for k_, v in retrieval_metrics(v2t.T, positives).items() if k_.startswith("v2t")}
        return {f"{key}_reranked": value for key, value in metrics.items() if key.split("_", 1)[1] in RERANKED_KEYS}
