"""One LightningDataModule for every recipe: streams tar shards made by ``make shards``."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from vfm.data.datasets import EvalStream, TrainStream
from vfm.data.interleave import InterleavedStream
from vfm.data.samples import ClipSettings, SampleProcessor, load_classes
from vfm.data.shards import count_samples, expand_urls
from vfm.data.text import CaptionTokenizer
from vfm.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize

log = logging.getLogger(__name__)

ShardSpec = str | list[str] | None


def lower_priority(nice: int, worker_id: int) -> None:
    """``worker_init_fn``: raises this worker's niceness by ``nice`` (nothing where the OS has no ``nice``)."""
    if nice and hasattr(os, "nice"):
        os.nice(nice)


class VideoTextDataModule(L.LightningDataModule):
    """Video-text (or image-text, or labelled video) batches from webdataset shards.

    Args:
        train_shards / val_shards / test_shards / predict_shards: a glob, a brace pattern or a list of
            either; test and predict default to the validation shards.
        batch_size: per device; ``eval_batch_size`` defaults to it.
        num_workers: data worker processes per device (decoding runs one thread per worker).
        num_frames, image_size: clip shape T x image_size x image_size.
        sampling: frame sampling in training (``rand``, or ``fps`` at ``target_fps``); ``eval_sampling``
            in evaluation (``middle`` or ``fps``).
        decode_short_side: short side the decoder resizes to before cropping (default ``image_size``).
        crop_scale, flip: training augmentation (flip is off: it would contradict "left"/"right" captions).
        video_backend: ``pyav`` (default) or ``decord``.
        tokenizer: an open_clip model name (bundled tokenizer, offline) or a local HuggingFace tokenizer folder.
        label_key, classes: metadata field used as ``label`` and the class list mapping names to indices.
        test_clips, test_crops: multi-view test: each test video gives clips x crops views (video
            [B, V, T, C, H, W]); clips interleave ``middle`` sampling, crops spread along the long side.
        samples_per_epoch: epoch length of the endless training stream, over all devices.
        resampled: draw training shards with replacement (any shard count works); without it each reader
            cycles through its own shards, which needs at least ranks x workers shards.
        seed: seeds shard order, frame sampling and crops together with epoch, rank, worker and resumes.
        worker_nice: added to the data workers' niceness (Unix), so that where they share cores with the training
            threads (a CPU run) the OS runs the training first and decodes in the gaps, instead of stalling a
            team of OpenMP threads whenever a worker takes one of their cores. 0 leaves the priority alone.
        image_shards, image_batch_size: an image-text training stream whose batches (1-frame clips) alternate
            with the video batches step by step (UMT stage 2); as many image batches as video batches per
            epoch, ``samples_per_epoch`` counting the video samples.
    """

    def __init__(
        self,
        train_shards: ShardSpec = "data/shards/synthetic/clips/train-*.tar",
        val_shards: ShardSpec = "data/shards/synthetic/clips/val-*.tar",
        test_shards: ShardSpec = None,
        predict_shards: ShardSpec = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        num_frames: int = 8,
        image_size: int = 224,
        sampling: Literal["rand", "fps"] = "rand",
        eval_sampling: Literal["middle", "fps"] = "middle",
        target_fps: float = 1.0,
        decode_short_side: int | None = None,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        flip: float = 0.0,
        video_backend: Literal["pyav", "decord"] = "pyav",
        tokenizer: str = "ViT-B-16",
        context_length: int = 77,
        label_key: str | None = None,
        classes: str | list[str] | None = None,
        test_clips: int = 1,
        test_crops: int = 1,
        samples_per_epoch: int = 10_000,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        mean: tuple[float, float, float] = OPENAI_CLIP_MEAN,
        std: tuple[float, float, float] = OPENAI_CLIP_STD,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        worker_nice: int = 0,
        image_shards: ShardSpec = None,
        image_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._tokenizer: CaptionTokenizer | None = None
        self._start_epoch = 0
        self._resume_token = 0
        self._samples_seen = 0

    # ---- helpers -------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> CaptionTokenizer:
        if self._tokenizer is None:
            self._tokenizer = CaptionTokenizer(self.hparams.tokenizer, self.hparams.context_length)
        return self._tokenizer

    def _distributed(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _processor(self, train: bool, views: tuple[int, int] = (1, 1)) -> SampleProcessor:
        h = self.hparams
        if views != (1, 1) and h.eval_sampling != "middle":
            raise ValueError(f"test_clips > 1 needs eval_sampling='middle', not {h.eval_sampling!r}")
        settings = ClipSettings(
            num_frames=h.num_frames,
            image_size=h.image_size,
            sampling=h.sampling if train else h.eval_sampling,
            target_fps=h.target_fps,
            decode_short_side=h.decode_short_side,
            crop_scale=tuple(h.crop_scale),
            flip=h.flip,
            backend=h.video_backend,
            train=train,
            clips=views[0],
            crops=views[1],
        )
        # The class list is read when data is needed, so a config parses before `make shards` has run.
        return SampleProcessor(settings, self.tokenizer, h.label_key, load_classes(h.classes, h.label_key))

    def _loader(self, dataset: torch.utils.data.IterableDataset) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=None,  # batches are made in the workers
            num_workers=workers,
            # Persistent workers keep their epoch counters (they seed each epoch's shard order).
            persistent_workers=workers > 0,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
            prefetch_factor=self.hparams.prefetch_factor if workers > 0 else None,
            worker_init_fn=functools.partial(lower_priority, self.hparams.worker_nice) if workers > 0 else None,
        )

    # ---- Lightning hooks -------------------------------------------------------------------------
    def train_dataset(self) -> TrainStream | InterleavedStream:
        video = self._train_stream(self.hparams.train_shards, self.hparams.batch_size)
        if self.hparams.image_shards is None:
            return video
        image_batch = self.hparams.image_batch_size or self.hparams.batch_size
        images = self._train_stream(self.hparams.image_shards, image_batch, len(video), seed_offset=1)
        return InterleavedStream([images, video])

    def _train_stream(
        self, shards: ShardSpec, batch_size: int, num_batches: int | None = None, seed_offset: int = 0
    ) -> TrainStream:
        h = self.hparams
        if shards is None:
            raise ValueError("data.train_shards is not set: give a glob, a brace pattern or a list of shards")
        rank, world_size = self._distributed()
        urls = expand_urls(shards)
        readers = world_size * max(h.num_workers, 1)
        if not h.resampled and len(urls) < readers:
            raise ValueError(
                f"{len(urls)} training shards cannot feed {world_size} ranks x {max(h.num_workers, 1)} workers "
                f"= {readers} readers without resampling: make at least {readers} shards "
                "(make_shards --samples-per-shard smaller), use fewer workers, or set data.resampled=true"
            )
        num_batches = num_batches or h.samples_per_epoch // (batch_size * world_size)
        if num_batches < 1:
            raise ValueError(
                f"samples_per_epoch={h.samples_per_epoch} is less than one batch of {batch_size} on each of "
                f"{world_size} devices"
            )
        offsets = _offsets(urls)
        return TrainStream(
            urls,
            self._processor(train=True),
            batch_size,
            num_batches,
            offsets,
            rank,
            world_size,
            h.seed + seed_offset,
            h.resampled,
            h.shuffle_buffer,
            self._start_epoch,
            self._resume_token,
        )

    def eval_dataset(self, spec: ShardSpec, views: tuple[int, int] = (1, 1)) -> EvalStream:
        rank, world_size = self._distributed()
        urls = expand_urls(spec)
        counts = [count_samples(url) for url in urls]
        batch_size = self.hparams.eval_batch_size or self.hparams.batch_size
        return EvalStream(
            urls,
            counts,
            self._processor(train=False, views=views),
            batch_size,
            rank,
            world_size,
            self.hparams.num_workers,
            self.hparams.seed,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset())

    def val_dataloader(self) -> DataLoader | list:
        if self.hparams.val_shards is None:
            return []
        return self._loader(self.eval_dataset(self.hparams.val_shards))

    def test_dataloader(self) -> DataLoader:
        views = (self.hparams.test_clips, self.hparams.test_crops)
        return self._loader(self.eval_dataset(self.hparams.test_shards or self.hparams.val_shards, views))

    def predict_dataloader(self) -> DataLoader:
        h = self.hparams
        return self._loader(self.eval_dataset(h.predict_shards or h.test_shards or h.val_shards))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalises uint8 frames on the device: workers move 4x fewer bytes than float32 would."""
        if isinstance(batch, dict) and batch.get("video") is not None and batch["video"].dtype == torch.uint8:
            batch["video"] = normalize(batch["video"], self.hparams.mean, self.hparams.std)
        return batch

    # ---- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Epoch and samples seen; on resume the stream is reseeded, so it reads a fresh shard sequence."""
        trainer = self.trainer
        if trainer is not None:
            rank, world_size = self._distributed()
            accumulate = getattr(trainer, "accumulate_grad_batches", 1)
            self._samples_seen = trainer.global_step * accumulate * self.hparams.batch_size * world_size
            self._start_epoch = trainer.current_epoch
        return {"epoch": self._start_epoch, "samples_seen": self._samples_seen, "resume_token": self._resume_token}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._start_epoch = int(state_dict.get("epoch", 0))
        self._samples_seen = int(state_dict.get("samples_seen", 0))
        # Any value that differs from the saved run's gives every reader a new seed.
        self._resume_token = int(state_dict.get("resume_token", 0)) * 1_000_003 + self._samples_seen + 1


def _offsets(urls: list[str]) -> dict[str, int]:
    """Start position of each shard in the list, where every shard's size is known; else empty."""
    try:
        counts = [count_samples(url) for url in urls]
    except (OSError, ValueError):
        return {}
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    return dict(zip(urls, starts))
