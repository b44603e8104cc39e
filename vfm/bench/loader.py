"""Loader benchmark: clips/s of vfm's sample path (decode + sample + resize + crop) against decord's
``get_batch`` and against decoding every frame, on WebVid-like 596x336 h264 clips, one core each.

All three run the same ``SampleProcessor`` (same frame indices, same crops) and differ only in the decoder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vfm.data.decode import build_decoder
from vfm.data.samples import ClipSettings, SampleProcessor
from vfm.data.text import CaptionTokenizer

CLIP_DIR = Path("data/bench/webvid_like")


def make_clips(root: Path = CLIP_DIR, per_gop: int = 6) -> dict[str, list[bytes]]:
    """WebVid-like clips from the embedded generator: a long GOP (250) and a short one (25), made once."""
    clips = {}
    for gop in (250, 25):
        out = root / f"gop{gop}"
        if not (out / "clips.csv").is_file():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "data_prep.synthetic",
                    "--out",
                    str(out),
                    "--webvid-like",
                    "--gop",
                    str(gop),
                    "--num-train",
                    str(per_gop),
                    "--num-val",
                    "0",
                    "--seed",
                    str(gop),
                ],
                check=True,
            )
        clips[f"gop{gop}"] = [p.read_bytes() for p in sorted(out.glob("videos/**/*.mp4"))][:per_gop]
    return clips


def _processor(backend: str, num_frames: int, size: int) -> SampleProcessor:
    settings = ClipSettings(num_frames=num_frames, image_size=size, sampling="rand", backend=backend, train=True)
    processor = SampleProcessor(settings, CaptionTokenizer("ViT-B-16"))
    processor._decoder = build_decoder(backend)
    return processor


def clips_per_second(backend: str, clips: list[bytes], repeats: int, num_frames: int, size: int) -> float:
    processor = _processor(backend, num_frames, size)
    raws = [
        {"__key__": str(i), "mp4": data, "json": json.dumps({"caption": "x"}).encode()} for i, data in enumerate(clips)
    ]
    processor.process(raws[0], np.random.default_rng(0), torch.Generator())  # warm-up
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(repeats):
        for raw in raws:
            clip = processor.process(raw, rng, generator)
    assert clip["video"].shape == (num_frames, 3, size, size)
    return repeats * len(raws) / (time.perf_counter() - start)


def run(repeats: int = 3, num_frames: int = 8, size: int = 224) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core each, as data workers run
    try:
        return _measure(repeats, num_frames, size)
    finally:  # `make bench` runs the step benchmarks next, in this process, on every core
        torch.set_num_threads(threads)


def _measure(repeats: int, num_frames: int, size: int) -> dict:
    clips = make_clips()
    detail, totals = {}, {}
    for name, group in clips.items():
        rates = {b: clips_per_second(b, group, repeats, num_frames, size) for b in ("pyav", "decord", "pyav_all")}
        detail[name] = {f"{b}_clips_per_s": round(r, 3) for b, r in rates.items()}
        for backend, rate in rates.items():
            totals[backend] = totals.get(backend, 0.0) + len(group) / rate  # seconds per pass
    count = sum(len(group) for group in clips.values())
    rate = {backend: count / seconds for backend, seconds in totals.items()}
    return {
        "loader_clips_per_s": round(rate["pyav"], 3),
        "loader_vs_decord": round(rate["pyav"] / rate["decord"], 3),
        "loader_vs_decode_all": round(rate["pyav"] / rate["pyav_all"], 3),
        "loader_detail": {**detail, "num_frames": num_frames, "size": size, "clips": count, "repeats": repeats},
    }
