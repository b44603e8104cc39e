"""Turning raw shard samples into clips and clips into batches (runs inside the data workers).

A batch is a dict with these keys (the only place they are defined):

- ``video``: uint8 [B, T, C, H, W] from the workers; float, normalised, after transfer to the device.
  Images come out as T = 1 clips. A multi-view test (``test_clips`` x ``test_crops`` > 1) gives
  [B, V, T, C, H, W] with V = clips x crops views of each video.
- ``text`` long [B, L] token ids and ``text_mask`` bool [B, L] (True on real tokens) of ``caption``.
- ``reverse_text`` / ``reverse_text_mask``: the caption of the clip played backwards, where the
  shards carry ``reverse_caption`` (the embedded corpus does); ``swapped_text`` / ``swapped_text_mask``
  likewise from ``swapped_caption`` (long videos: two events swapped).
- ``label`` long [B]: where the datamodule has a ``label_key``.
- ``idx`` long [B]: position of the sample in its shard list (-1 where shard sizes are unknown).
- ``key`` and ``caption``: lists of strings.
- ``num_failed`` long scalar: samples this worker skipped (decode errors) since its previous batch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from vfm.data.decode import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, DecodeError, build_decoder
from vfm.data.sampling import sample_indices
from vfm.data.text import CaptionTokenizer
from vfm.data.transforms import eval_transform, eval_views, train_transform

log = logging.getLogger(__name__)

OPTIONAL_CAPTIONS = {"reverse_caption": "reverse_text", "swapped_caption": "swapped_text"}


class SkipSample(Exception):
    """A sample that cannot be used; counted and skipped, never fatal."""


@dataclass
class ClipSettings:
    """How a clip is made from a video: picklable, shared by every worker."""

    num_frames: int = 8
    image_size: int = 224
    sampling: str = "rand"
    target_fps: float = 1.0
    decode_short_side: int | None = None
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: float = 0.0
    backend: str = "pyav"
    train: bool = True
    clips: int = 1  # evaluation views: clips x crops per video (multi-view test)
    crops: int = 1


def load_classes(classes: str | list[str] | None, label_key: str | None) -> list[str] | None:
    """Class names from a list, a text file (one per line) or a JSON file (a list, or a dict keyed by label_key)."""
    if classes is None or isinstance(classes, list):
        return classes
    path = Path(classes)
    if not path.is_file():
        raise FileNotFoundError(f"class list {classes!r} not found")
    if path.suffix == ".json":
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            if label_key not in loaded:
                raise KeyError(f"{classes} has no class list for label_key {label_key!r}; it has {sorted(loaded)}")
            loaded = loaded[label_key]
        return [str(name) for name in loaded]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class SampleProcessor:
    """raw webdataset sample -> clip dict; list of clip dicts -> batch dict."""

    def __init__(
        self,
        settings: ClipSettings,
        tokenizer: CaptionTokenizer,
        label_key: str | None = None,
        classes: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.label_key = label_key
        self.class_index = {name: i for i, name in enumerate(classes)} if classes else None
        self._decoder = None

    @property
    def decoder(self):
        if self._decoder is None:  # built lazily, inside the worker process
            self._decoder = build_decoder(self.settings.backend)
        return self._decoder

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_decoder": None}

    def process(self, raw: dict, rng: np.random.Generator, generator: torch.Generator) -> dict:
        """One clip; raises SkipSample with a reason when the sample cannot be used."""
        meta = json.loads(raw["json"]) if "json" in raw else {}
        caption = str(meta.get("caption") or meta.get("name") or _text(raw.get("txt")) or "").strip()
        sample = {"key": raw["__key__"], "caption": caption, "idx": raw.get("__index__", -1)}
        if self.label_key is not None:
            sample["label"] = self._label(meta)
        elif not caption:
            raise SkipSample("empty caption")
        for field in OPTIONAL_CAPTIONS:
            if meta.get(field):
                sample[field] = str(meta[field])
        sample["video"] = self._frames(raw, rng, generator)
        return sample

    def _label(self, meta: dict) -> int:
        value = meta.get(self.label_key)
        if value is None:
            raise SkipSample(f"no {self.label_key!r} in the sample's metadata")
        if self.class_index is not None:
            if str(value) not in self.class_index:
                raise SkipSample(f"label {value!r} is not in the class list")
            return self.class_index[str(value)]
        try:
            return int(value)
        except ValueError as error:
            raise SkipSample(f"label {value!r} is not an integer and no class list was given") from error

    def _frames(self, raw: dict, rng: np.random.Generator, generator: torch.Generator) -> torch.Tensor:
        settings = self.settings
        short_side = settings.decode_short_side or settings.image_size
        video_ext = next((ext for ext in VIDEO_EXTENSIONS if ext in raw), None)
        if video_ext is not None:

            def choose(info):
                # several clips: one sampling of clips x T frames, interleaved (see eval_views)
                return sample_indices(
                    info.num_frames,
                    settings.num_frames * settings.clips,
                    settings.sampling,
                    rng if settings.train else None,
                    info.fps,
                    settings.target_fps,
                )

            try:
                array, _ = self.decoder(raw[video_ext], choose, short_side)
            except DecodeError as error:
                raise SkipSample(f"decode error: {error}") from error
            frames = torch.from_numpy(array).permute(0, 3, 1, 2)
        else:
            image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in raw), None)
            if image_ext is None:
                members = sorted(k for k in raw if not k.startswith("__"))
                raise SkipSample(f"no video or image in the sample (members: {members})")
            try:
                image = decode_image(torch.frombuffer(bytearray(raw[image_ext]), dtype=torch.uint8), ImageReadMode.RGB)
            except RuntimeError as error:
                raise SkipSample(f"image decode error: {error}") from error
            frames = image.unsqueeze(0)
        if settings.train:
            return train_transform(frames, settings.image_size, generator, settings.crop_scale, settings.flip)
        if settings.clips * settings.crops > 1:
            return eval_views(frames, settings.image_size, settings.clips, settings.crops)
        return eval_transform(frames, settings.image_size)

    def collate(self, samples: list[dict], num_failed: int = 0) -> dict:
        captions = [s["caption"] for s in samples]
        text, text_mask = self.tokenizer(captions)
        batch = {
            "video": torch.stack([s["video"] for s in samples]),
            "text": text,
            "text_mask": text_mask,
            "idx": torch.tensor([s["idx"] for s in samples], dtype=torch.long),
            "key": [s["key"] for s in samples],
            "caption": captions,
            "num_failed": torch.tensor(num_failed, dtype=torch.long),
        }
        if "label" in samples[0]:
            batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        for field, name in OPTIONAL_CAPTIONS.items():
            if all(field in s for s in samples):
                batch[name], batch[f"{name}_mask"] = self.tokenizer([s[field] for s in samples])
        return batch


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else value
