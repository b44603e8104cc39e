"""The time-order test: does the model prefer the true direction of time?"""

from __future__ import annotations

import torch


def temporal_accuracy(
    video: torch.Tensor,
    text: torch.Tensor,
    reverse_text: torch.Tensor | None = None,
    reversed_video: torch.Tensor | None = None,
) -> dict[str, float]:
    """Accuracies on L2-normalised embeddings [N, D], row i of each belonging to sample i.

    - ``temporal_text_acc``: the clip scores its own caption above its time-reversed (or event-swapped)
      caption.
    - ``temporal_video_acc``: the caption scores the clip above the clip's frames played backwards.
    - ``temporal_acc``: the mean of those that were given (0.5 is chance for each).
    """
    scores = (video * text).sum(-1)
    metrics: dict[str, float] = {}
    if reverse_text is not None:
        metrics["temporal_text_acc"] = (scores > (video * reverse_text).sum(-1)).float().mean().item()
    if reversed_video is not None:
        metrics["temporal_video_acc"] = (scores > (reversed_video * text).sum(-1)).float().mean().item()
    if metrics:
        metrics["temporal_acc"] = sum(metrics.values()) / len(metrics)
    return metrics
