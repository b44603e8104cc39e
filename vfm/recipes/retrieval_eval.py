"""Zero-shot retrieval and time-order evaluation, run in validation and test by the contrastive recipes."""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vfm.eval import caption_positives, chance_recall_at_1, gather_embeddings, retrieval_metrics, temporal_accuracy


class RetrievalEvaluator:
    """Collects per-batch embeddings on each rank, then gathers and scores them once per epoch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tensors: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.captions: list[str] = []

    def add(self, captions: list[str], **embeddings: torch.Tensor | None) -> None:
        self.captions.extend(captions)
        for name, value in embeddings.items():
            if value is not None:
                self.tensors[name].append(F.normalize(value.detach().float(), dim=-1))

    def compute(self) -> dict[str, float]:
        if not self.captions:
            return {}
        gathered = {name: gather_embeddings(torch.cat(parts)) for name, parts in self.tensors.items()}
        captions = _gather_strings(self.captions)
        video, text = gathered["video"], gathered["text"]
        positives = caption_positives(captions, captions).to(video.device)
        metrics = retrieval_metrics(text @ video.T, positives)
        metrics["chance_r1"] = chance_recall_at_1(positives)
        metrics |= temporal_accuracy(video, text, gathered.get("reverse_text"), gathered.get("reversed_video"))
        metrics["num_samples"] = float(len(captions))
        self.reset()
        return metrics


def _gather_strings(strings: list[str]) -> list[str]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return strings
    gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, strings)
    return [s for part in gathered for s in part]
