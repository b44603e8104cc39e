"""Batches of several training streams interleaved by step (UMT stage 2: image-text, then video-text, ...)."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import IterableDataset


class InterleavedStream(IterableDataset):
    """Round-robin over streams that batch themselves: one batch of each in turn, until all are spent.

    Each data worker interleaves its own share of every stream, so the order of modalities is the same on
    every rank at every step (ranks run the same number of workers with the same quotas), which keeps
    all-gathered losses shape-consistent under DDP.
    """

    def __init__(self, streams: list[IterableDataset]) -> None:
        if not streams:
            raise ValueError("nothing to interleave")
        self.streams = streams

    def __len__(self) -> int:
        return sum(len(stream) for stream in self.streams)

    def __iter__(self) -> Iterator[dict]:
        iterators = [iter(stream) for stream in self.streams]
        while iterators:
            for iterator in list(iterators):
                try:
                    yield next(iterator)
                except StopIteration:
                    iterators.remove(iterator)
