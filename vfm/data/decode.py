"""Video decoding from in-memory bytes: PyAV (default, GOP-skipping) and decord (optional), one interface.

The PyAV path decodes only what the sampled frames need: it demuxes packets up to the group of
pictures (GOP) after the last wanted frame, sends the decoder only the GOPs that hold a wanted frame,
stops each GOP at its last wanted packet, tells the decoder to skip non-reference frames that are not
wanted (``skip_frame``), and converts and resizes only the wanted frames in swscale. Frames are matched
to indices by presentation time, so seeking or skipping never shifts an index, and variable-frame-rate
videos are sampled by time. Open GOPs or missing timestamps fall back to decoding in order.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi", "m4v", "mpg", "mpeg", "ts", "flv", "ogv", "3gp")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


class DecodeError(RuntimeError):
    """A video that cannot be decoded; the data pipeline counts and skips it."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


IndexChooser = Callable[[VideoInfo], Sequence[int]]


class Decoder(Protocol):
    def __call__(
        self, data: bytes, choose: IndexChooser, short_side: int | None = None
    ) -> tuple[np.ndarray, VideoInfo]:
        """Frames [T, H, W, 3] uint8 RGB at the chosen indices, resized so the short side is ``short_side``."""


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side``, aspect kept; None keeps the size."""
    if not short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _stream_info(container: av.container.InputContainer, stream: av.video.VideoStream) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    num_frames = stream.frames
    if num_frames <= 0 and fps > 0:
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            seconds = 0.0
        num_frames = int(round(seconds * fps))
    return VideoInfo(num_frames=max(num_frames, 0), fps=fps, width=stream.width, height=stream.height)


class _NeedsSequentialDecode(Exception):
    """Timestamps are missing or GOPs are open: GOP skipping is not safe for this video."""


class PyAVDecoder:
    """Decodes the sampled frames of a video held in memory with PyAV, one thread (one worker per core)."""

    def __init__(self, skip_gops: bool = True) -> None:
        self.skip_gops = skip_gops

    def __call__(
        self, data: bytes, choose: IndexChooser, short_side: int | None = None
    ) -> tuple[np.ndarray, VideoInfo]:
        try:
            with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
                if not container.streams.video:
                    raise DecodeError("no video stream")
                stream = container.streams.video[0]
                stream.thread_type = "SLICE"
                stream.codec_context.thread_count = 1
                info = _stream_info(container, stream)
                if info.num_frames <= 0 or info.fps <= 0 or not self.skip_gops:
                    return self._decode_in_order(container, stream, info, choose, short_side)
                indices = [min(max(int(i), 0), info.num_frames - 1) for i in choose(info)]
                try:
                    frames = self._decode_gops(container, stream, info, indices, short_side)
                except _NeedsSequentialDecode:
                    container.seek(0, stream=stream)
                    stream.codec_context.flush_buffers()
                    return self._decode_in_order(container, stream, info, choose, short_side)
                return _assemble(frames, indices), info
        except av.FFmpegError as error:
            raise DecodeError(f"{type(error).__name__}: {error}") from error

    def _decode_gops(self, container, stream, info: VideoInfo, indices: list[int], short_side: int | None) -> dict:
        start = stream.start_time or 0
        seconds_per_tick = float(stream.time_base) * info.fps

        def index_of(pts: int | None) -> int:
            if pts is None:
                raise _NeedsSequentialDecode
            return int(round((pts - start) * seconds_per_tick))

        wanted = set(indices)
        gops = _demux_gops(container, stream, index_of, last_index=max(indices))
        width, height = scaled_size(info.width, info.height, short_side)
        context = stream.codec_context
        frames: dict[int, np.ndarray] = {}

        def collect(decoded) -> None:
            for frame in decoded:
                index = index_of(frame.pts)
                if index in wanted and index not in frames:
                    # threads=1: PyAV's default builds a multi-threaded scaler per frame, which is slower here.
                    frames[index] = frame.to_ndarray(width=width, height=height, format="rgb24", threads=1)

        for gop in gops:
            positions = [i for i, (_, index) in enumerate(gop) if index in wanted]
            if not positions:
                continue
            for packet, index in gop[: positions[-1] + 1]:
                context.skip_frame = "DEFAULT" if index in wanted else "NONREF"
                collect(context.decode(packet))
            # Drain the frames the decoder holds back for reordering before jumping to another GOP.
            context.skip_frame = "DEFAULT"
            collect(context.decode(None))
            context.flush_buffers()
        return frames

    def _decode_in_order(self, container, stream, info: VideoInfo, choose: IndexChooser, short_side: int | None):
        """Decodes every frame in order (kept as compact YUV frames) and converts only the chosen ones."""
        decoded = [frame for frame in container.decode(stream)]
        if not decoded:
            raise DecodeError("no decodable frames")
        info = VideoInfo(len(decoded), info.fps or 1.0, decoded[0].width, decoded[0].height)
        indices = [min(max(int(i), 0), len(decoded) - 1) for i in choose(info)]
        width, height = scaled_size(info.width, info.height, short_side)
        cache: dict[int, np.ndarray] = {}
        for index in indices:
            if index not in cache:
                cache[index] = decoded[index].to_ndarray(width=width, height=height, format="rgb24", threads=1)
        return np.stack([cache[i] for i in indices]), info


def _demux_gops(container, stream, index_of: Callable[[int | None], int], last_index: int) -> list[list[tuple]]:
    """Packets grouped by GOP as (packet, frame index), up to the GOP that holds ``last_index``."""
    gops: list[list[tuple]] = []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        index = index_of(packet.pts)
        if packet.is_keyframe:
            if gops and index > last_index:
                break
            gops.append([])
        elif not gops:
            gops.append([])
        elif index < index_of(gops[-1][0][0].pts) and gops[-1][0][0].is_keyframe:
            # A frame shown before its GOP's keyframe references the previous GOP: an open GOP.
            raise _NeedsSequentialDecode
        gops[-1].append((packet, index))
    return gops


def _assemble(frames: dict[int, np.ndarray], indices: Sequence[int]) -> np.ndarray:
    """Stacks the wanted frames; an index with no frame of its own (timing gaps) takes the nearest one."""
    if not frames:
        raise DecodeError("no frame could be decoded at the sampled positions")
    available = np.array(sorted(frames))
    picked = []
    for index in indices:
        nearest = index if index in frames else int(available[np.abs(available - index).argmin()])
        picked.append(frames[nearest])
    return np.stack(picked)


class DecodeAllDecoder(PyAVDecoder):
    """Baseline for benchmarks: decodes and converts every frame up to the last, then picks the chosen ones."""

    def __call__(
        self, data: bytes, choose: IndexChooser, short_side: int | None = None
    ) -> tuple[np.ndarray, VideoInfo]:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"
            stream.codec_context.thread_count = 1
            info = _stream_info(container, stream)
            indices = [min(max(int(i), 0), info.num_frames - 1) for i in choose(info)]
            width, height = scaled_size(info.width, info.height, short_side)
            arrays = []
            for frame in container.decode(stream):
                arrays.append(frame.to_ndarray(width=width, height=height, format="rgb24", threads=1))
                if len(arrays) > max(indices):
                    break
        return np.stack([arrays[min(i, len(arrays) - 1)] for i in indices]), info


class DecordDecoder:
    """decord's VideoReader.get_batch behind the same interface (``pip install vfm[decord]``)."""

    def __init__(self) -> None:
        try:
            import decord
        except ImportError as error:
            raise ImportError("the decord backend needs `pip install decord` (or `pip install vfm[decord]`)") from error
        self._decord = decord

    def __call__(
        self, data: bytes, choose: IndexChooser, short_side: int | None = None
    ) -> tuple[np.ndarray, VideoInfo]:
        try:
            if short_side:
                # decord resizes in its decoder only to an explicit size, so read the size from the header first.
                with av.open(io.BytesIO(data)) as container:
                    stream = container.streams.video[0]
                    width, height = scaled_size(stream.width, stream.height, short_side)
            else:
                width = height = -1
            reader = self._decord.VideoReader(io.BytesIO(data), width=width, height=height, num_threads=1)
            first = reader[0].shape
            info = VideoInfo(len(reader), float(reader.get_avg_fps()), first[1], first[0])
            indices = [min(max(int(i), 0), info.num_frames - 1) for i in choose(info)]
            return reader.get_batch(indices).asnumpy(), info
        except Exception as error:  # decord raises its own DECORDError, not a RuntimeError
            raise DecodeError(f"{type(error).__name__}: {error}") from error


def build_decoder(backend: str = "pyav") -> Decoder:
    """The decoder named by ``backend``: ``pyav`` (default), ``decord`` or ``pyav_all`` (benchmark baseline)."""
    decoders = {"pyav": PyAVDecoder, "decord": DecordDecoder, "pyav_all": DecodeAllDecoder}
    if backend not in decoders:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {sorted(decoders)}")
    return decoders[backend]()
