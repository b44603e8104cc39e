"""Iterable datasets over tar shards: a resampled training stream and an exactly-once evaluation pass.

Both read shards with webdataset and batch inside the workers, so the DataLoader runs with
``batch_size=None`` and each dataset knows its length in batches (the progress bar's total).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from vfm.data.samples import SampleProcessor, SkipSample
from vfm.data.shards import split_range

log = logging.getLogger(__name__)

# A stream that yields nothing but failures is broken data, not bad luck: stop with a clear error.
MAX_CONSECUTIVE_FAILURES = 500


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _Batcher:
    """Processes raw samples into batches, counting and logging the ones it must skip."""

    def __init__(self, processor: SampleProcessor, batch_size: int, seed: list[int]) -> None:
        self.processor = processor
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        self.failed = 0
        self.consecutive_failures = 0

    def on_tar_error(self, error: Exception) -> bool:
        self._skip(f"unreadable shard data: {error!r}")
        return True

    def _skip(self, reason: str) -> None:
        self.failed += 1
        self.consecutive_failures += 1
        if self.failed <= 10 or self.failed % 100 == 0:
            log.warning("skipped a sample (%d so far in this worker): %s", self.failed, reason)
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(f"{self.consecutive_failures} samples in a row failed to load; last: {reason}")

    def batches(self, raw_samples: Iterator[dict], final_partial: bool) -> Iterator[dict]:
        pending: list[dict] = []
        for raw in raw_samples:
            try:
                pending.append(self.processor.process(raw, self.rng, self.generator))
            except SkipSample as error:
                self._skip(f"{raw.get('__key__')} in {raw.get('__url__')}: {error}")
                continue
            self.consecutive_failures = 0
            if len(pending) == self.batch_size:
                yield self._collate(pending)
                pending = []
        if pending and final_partial:
            yield self._collate(pending)

    def _collate(self, samples: list[dict]) -> dict:
        batch = self.processor.collate(samples, self.failed)
        self.failed = 0
        return batch


def _index_samples(samples: Iterator[dict], offsets: dict[str, int]) -> Iterator[dict]:
    """Adds ``__index__``: the sample's position in the whole shard list (-1 where shard sizes are unknown)."""
    position, url = 0, None
    for sample in samples:
        if sample.get("__url__") != url:
            url, position = sample.get("__url__"), 0
        sample["__index__"] = offsets[url] + position if url in offsets else -1
        position += 1
        yield sample


class TrainStream(IterableDataset):
    """Endless shuffled samples from resampled shards, cut into epochs of a known number of batches.

    The shard sequence of each reader is seeded by (seed, epoch, rank, worker, resume token): no two
    ranks or workers read the same sequence, and a resumed run (new resume token) reads a fresh one.
    The epoch counts this process's passes, so workers must be persistent (the datamodule makes them so).
    """

    def __init__(
        self,
        urls: list[str],
        processor: SampleProcessor,
        batch_size: int,
        num_batches: int,
        offsets: dict[str, int],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        start_epoch: int = 0,
        resume_token: int = 0,
    ) -> None:
        self.urls, self.processor, self.offsets = urls, processor, offsets
        self.batch_size, self.num_batches = batch_size, num_batches
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.resampled, self.shuffle_buffer = resampled, shuffle_buffer
        self.start_epoch, self.resume_token = start_epoch, resume_token
        self._passes = 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        epoch = self.start_epoch + self._passes
        self._passes += 1
        seed = [self.seed, epoch, self.rank, worker, self.resume_token]
        quota = self.num_batches // num_workers + (worker < self.num_batches % num_workers)
        if quota == 0:
            return
        shard_rng = random.Random(str(seed))
        batcher = _Batcher(self.processor, self.batch_size, seed)
        urls = self._shard_sequence(shard_rng, worker, num_workers)
        samples = wds.tarfile_to_samples(handler=batcher.on_tar_error)({"url": url} for url in urls)
        samples = _index_samples(samples, self.offsets)
        samples = wds.shuffle(self.shuffle_buffer, min(100, self.shuffle_buffer), rng=shard_rng)(samples)
        for count, batch in enumerate(batcher.batches(samples, final_partial=False), start=1):
            yield batch
            if count == quota:
                return

    def _shard_sequence(self, rng: random.Random, worker: int, num_workers: int) -> Iterator[str]:
        if self.resampled:
            while True:
                yield rng.choice(self.urls)
        readers = self.world_size * num_workers
        mine = self.urls[self.rank * num_workers + worker :: readers]
        while True:  # each reader cycles through its own shards in a fresh order until its quota is met
            order = list(mine)
            rng.shuffle(order)
            yield from order


class EvalStream(IterableDataset):
    """Every sample exactly once across ranks and workers, in balanced contiguous ranges (no hang on uneven shards)."""

    def __init__(
        self,
        urls: list[str],
        counts: list[int],
        processor: SampleProcessor,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        self.urls, self.counts, self.processor = urls, counts, processor
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_workers, self.seed = max(num_workers, 1), seed
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()

    def worker_range(self, worker: int, num_workers: int) -> tuple[int, int]:
        start, stop = split_range(self.offsets[-1], self.world_size, self.rank)
        sub_start, sub_stop = split_range(stop - start, num_workers, worker)
        return start + sub_start, start + sub_stop

    def __len__(self) -> int:
        sizes = [np.subtract(*self.worker_range(w, self.num_workers)[::-1]) for w in range(self.num_workers)]
        return int(sum(-(-size // self.batch_size) for size in sizes))

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        start, stop = self.worker_range(worker, num_workers)
        batcher = _Batcher(self.processor, self.batch_size, [self.seed, self.rank, worker])
        urls = [u for i, u in enumerate(self.urls) if self.offsets[i] < stop and self.offsets[i + 1] > start]
        offsets = {u: self.offsets[self.urls.index(u)] for u in urls}
        samples = wds.tarfile_to_samples(handler=batcher.on_tar_error)({"url": url} for url in urls)
        yield from batcher.batches(_within(_index_samples(samples, offsets), start, stop), final_partial=True)


def _within(samples: Iterator[dict], start: int, stop: int) -> Iterator[dict]:
    for sample in samples:
        if sample["__index__"] >= stop:
            return
        if sample["__index__"] >= start:
            yield sample
