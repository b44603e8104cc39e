"""Encode uint8 frames to a video file with PyAV: used by the synthetic corpus, re-encoding and tests."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Container format for each file suffix PyAV may not guess from a file-like object.
_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
_PIX_FMT = {"libx264": "yuv420p", "libx265": "yuv420p", "libvpx-vp9": "yuv420p", "mpeg4": "yuv420p"}


def encode_video(
    frames: np.ndarray,
    target: str | Path | io.BytesIO,
    fps: float = 8.0,
    codec: str = "libx264",
    gop: int | None = None,
    crf: int = 23,
    container_format: str | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """Write ``frames`` ([T, H, W, 3] uint8 RGB, H and W even) to ``target``.

    ``gop`` sets the keyframe interval (None keeps the encoder's default); ``crf`` the quality of
    libx264/libx265/vp9. ``container_format`` is needed when ``target`` is a buffer.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if codec == "libx265" and min(frames.shape[1:3]) < 64:
        # libx265 corrupts the heap (a later, unrelated crash) on frames smaller than its 64 px block.
        raise ValueError(f"libx265 needs frames of at least 64 x 64 pixels, got {frames.shape[2]} x {frames.shape[1]}")
    if isinstance(target, (str, Path)):
        container_format = container_format or _FORMATS.get(Path(target).suffix.lower())
        target = str(target)
    rate = Fraction(fps).limit_denominator(1000)
    codec_options = {"crf": str(crf)} if codec in ("libx264", "libx265", "libvpx-vp9") else {}
    if codec == "libx265":
        codec_options["x265-params"] = "log-level=error"
    codec_options.update(options or {})
    with av.open(target, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, options=codec_options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = _PIX_FMT.get(codec, "yuv420p")
        if gop is not None:
            stream.codec_context.gop_size = gop
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def encode_video_bytes(
    frames: np.ndarray, fps: float = 8.0, codec: str = "libx264", suffix: str = ".mp4", **kwargs
) -> bytes:
    """Same as :func:`encode_video`, returning the file's bytes."""
    buffer = io.BytesIO()
    encode_video(frames, buffer, fps=fps, codec=codec, container_format=_FORMATS[suffix], **kwargs)
    return buffer.getvalue()
