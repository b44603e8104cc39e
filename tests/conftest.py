"""Shared fixtures: tiny clips and shards made inside the tests (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from data_prep.video_writer import encode_video_bytes
from vfm.models import create_clip


def numbered_frames(num_frames: int, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    """Frames whose blocky random content differs per frame, so any swapped frame is detected."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (num_frames, height // 8, width // 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)


def write_shards(directory: Path, samples: list[dict], per_shard: int, prefix: str = "train") -> list[str]:
    """Writes ``samples`` (webdataset dicts with ``__key__``) to tar shards and a make_shards-style stats.json."""
    directory.mkdir(parents=True, exist_ok=True)
    names, entries = [], []
    for start in range(0, len(samples), per_shard):
        name = f"{prefix}-{start // per_shard:06d}.tar"
        with wds.TarWriter(str(directory / name)) as sink:
            for sample in samples[start : start + per_shard]:
                sink.write(sample)
        names.append(str(directory / name))
        entries.append({"name": name, "split": prefix, "count": len(samples[start : start + per_shard])})
    stats = {"written": len(samples), "skipped": {}, "shards": entries}
    (directory / "stats.json").write_text(json.dumps(stats))
    return names


# the post-pretraining recipe at test size (configs/post_pretrain.yaml plus these): the model the CLI tests train
TINY_POST_PRETRAIN = ["--model.model=vit-tiny-test", "--model.num_frames=4", "--model.fusion_heads=4"]


def tiny_run_args(samples_per_epoch: int = 16, context_length: int | None = 32, root: Path | None = None) -> list[str]:
    """Command-line data and trainer arguments of a tiny CPU run: 4 frames of 32 px, batch 4, no data workers,
    fp32, no progress bar (and ``--data.context_length`` / ``--trainer.default_root_dir`` when given)."""
    args = [
        "--data.num_frames=4", "--data.image_size=32", "--data.batch_size=4", "--data.num_workers=0",
        f"--data.samples_per_epoch={samples_per_epoch}", "--trainer.precision=32-true",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    if context_length is not None:
        args.append(f"--data.context_length={context_length}")
    if root is not None:
        args.append(f"--trainer.default_root_dir={root}")
    return args


def clip_sample(index: int, num_frames: int = 12, caption: str | None = None, **meta) -> dict:
    frames = numbered_frames(num_frames, seed=index)
    meta = {"caption": caption if caption is not None else f"clip number {index}", **meta}
    return {"__key__": f"{index:06d}", "mp4": encode_video_bytes(frames, fps=8), "json": json.dumps(meta).encode()}


@pytest.fixture(scope="session")
def clip_shards(tmp_path_factory) -> tuple[Path, int]:
    """24 tiny clips in 6 training shards of 4, with labels and reverse captions."""
    directory = tmp_path_factory.mktemp("shards")
    samples = [clip_sample(i, reverse_caption=f"reversed {i}", motion=["left", "right"][i % 2]) for i in range(24)]
    write_shards(directory, samples, per_shard=4)
    return directory, len(samples)


class TrainingStep(torch.nn.Module):
    """A recipe's training step as a module's forward, as Lightning's DDP and FSDP wrappers run it."""

    def __init__(self, recipe) -> None:
        super().__init__()
        self.recipe = recipe

    def forward(self, batch: dict) -> torch.Tensor:
        return self.recipe.training_step(batch, 0)


def random_clip_file(directory: Path, seed: int) -> Path:
    """A randomly initialised vit-tiny-test open_clip checkpoint (32 px, patch 8, 2 blocks, width 64, output 32),
    saved as a local file, the way users pass pretrained weights and teachers."""
    torch.manual_seed(seed)
    with pytest.warns(UserWarning, match="randomly initialised"):
        clip = create_clip("vit-tiny-test")
    path = directory / "open_clip_tiny.pt"
    torch.save(clip.state_dict(), path)
    return path
