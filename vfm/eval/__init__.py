"""Zero-shot evaluation: retrieval metrics and the time-order test."""

from .retrieval import caption_positives, chance_recall_at_1, gather_embeddings, retrieval_metrics
from .temporal import temporal_accuracy

__all__ = ["caption_positives", "chance_recall_at_1", "gather_embeddings", "retrieval_metrics", "temporal_accuracy"]
