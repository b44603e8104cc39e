"""Check that a media file is complete and decodable, and describe it; used by make_shards.

Every problem is raised as :class:`Skip` with a short reason code, so the shard writer can count and list it
and move on. Reason codes raised here: ``missing``, ``empty_file``, ``unreadable``, ``not_video``,
``truncated``, ``no_video_stream``, ``no_decoder``, ``corrupt``, ``no_frames``, ``not_image``,
``reencode_failed``.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.video_writer import encode_video_bytes

# Top-level box types that start an MP4/QuickTime file (old QuickTime files may not start with ftyp).
_MP4_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"styp"}
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
# One thread (pool workers already fill the cores) and no mbtree: the same input then gives the same bytes,
# so a shard redone after a crash is identical to the first attempt.
_X264_REPEATABLE = {"threads": "1", "x264-params": "mbtree=0"}


class Skip(Exception):  # noqa: N818 - it is an outcome, not an error of the program
    """A sample that cannot go into a shard: ``reason`` is a short code, ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def read_media(source: str, media_root: str) -> bytes:
    """The bytes of ``source``, absolute or relative to ``media_root``; missing or empty files are skipped."""
    if not source.strip():
        raise Skip("missing", "empty path in the CSV")
    path = Path(source) if Path(source).is_absolute() else Path(media_root) / source
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Skip("missing", str(path)) from None
    except OSError as error:  # a folder, no permission, an I/O error
        raise Skip("unreadable", _describe(error)) from None
    if not data:
        raise Skip("empty_file", str(path))
    return data


def sniff_container(head: bytes) -> str | None:
    """Name the container family from a file's first bytes, or None when it does not look like a video."""
    if head[4:8] in _MP4_FIRST_BOXES:
        return "mp4"
    if head[:4] == _EBML_MAGIC:
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:3] == b"FLV" or head[:4] in (b"OggS", b"\x00\x00\x01\xba", b"\x30\x26\xb2\x75"):
        return "other"
    if len(head) > 188 and head[0] == head[188] == 0x47:  # MPEG-TS sync bytes
        return "other"
    return None


def _mp4_truncation(data: bytes) -> str | None:
    """Walk the top-level boxes: a box that claims more bytes than the file holds means a cut-off file.

    FFmpeg alone misses this when the index (moov) is at the front: it opens the file and the decoder only
    fails near the cut, or not at all when the cut falls in the last packet.
    """
    pos, size = 0, len(data)
    while pos + 8 <= size:
        box_size, kind = struct.unpack_from(">I4s", data, pos)
        if not all(32 <= char < 127 for char in kind):
            return None  # trailing garbage after the last box: not our business, FFmpeg ignores it
        if box_size == 1:
            if pos + 16 > size:
                return f"box header '{kind.decode()}' cut at byte {size}"
            box_size = struct.unpack_from(">Q", data, pos + 8)[0]
        elif box_size == 0:
            return None  # "extends to the end of the file" by definition
        if box_size < 8:
            return None
        if pos + box_size > size:
            return f"box '{kind.decode()}' ends at byte {pos + box_size}, file has {size}"
        pos += box_size
    return f"partial box header at byte {pos}" if pos < size else None


def _ebml_vint(data: bytes, pos: int) -> tuple[int, int, bool]:
    """Read an EBML variable-length integer: (value, next position, all-ones 'unknown size' marker).

    Raises IndexError when the file ends inside it and ValueError when it is not a valid one.
    """
    first = data[pos]
    length = 9 - first.bit_length() if first else 9
    if length > 8:
        raise ValueError("bad EBML length")
    if pos + length > len(data):
        raise IndexError("EBML integer cut by the end of the file")
    value = first & (0xFF >> length)
    for byte in data[pos + 1 : pos + length]:
        value = (value << 8) | byte
    return value, pos + length, value == (1 << (7 * length)) - 1


def _matroska_truncation(data: bytes) -> str | None:
    """Check that the EBML header and the Segment (FFmpeg writes its size on closing) fit in the file."""
    pos = 0
    try:
        for name in ("EBML header", "Segment"):
            _, pos = _ebml_vint(data, pos)[:2]  # element id
            element_size, pos, unknown = _ebml_vint(data, pos)
            if unknown:
                return None  # streamed file without a final size: nothing to compare against
            if pos + element_size > len(data):
                return f"{name} ends at byte {pos + element_size}, file has {len(data)}"
            pos += element_size
    except IndexError:
        return f"element header cut at byte {len(data)}"
    except ValueError:
        return None  # not a structure we understand; let FFmpeg judge it
    return None


def _avi_truncation(data: bytes) -> str | None:
    riff_size = struct.unpack_from("<I", data, 4)[0]
    if 8 + riff_size > len(data):
        return f"RIFF chunk ends at byte {8 + riff_size}, file has {len(data)}"
    return None


_TRUNCATION_CHECKS = {"mp4": _mp4_truncation, "matroska": _matroska_truncation, "avi": _avi_truncation}


def _open(data: bytes, container_kind: str | None) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(data), metadata_errors="ignore")
    except Exception as error:  # PyAV raises several FFmpegError kinds, OSError and EOFError for bad input
        raise Skip("unreadable" if container_kind else "not_video", _describe(error)) from None


def _describe(error: Exception) -> str:
    # FFmpeg errors name the file, which is '<none>' for bytes: keep only the message.
    message = error.strerror if isinstance(error, av.FFmpegError) and error.strerror else error
    return f"{type(error).__name__}: {message}"[:200]


def _decode_all(stream: av.video.stream.VideoStream, packets: list[av.Packet]) -> int:
    frames = 0
    for packet in [*packets, None]:  # None drains the decoder's delayed frames
        frames += len(stream.codec_context.decode(packet))
    return frames


def _scan(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> dict:
    """Demux every packet; decode until the first frame, then decode the last GOP to prove the end is sound.

    Decoding only the head and the tail keeps probing cheap for long clips while still catching cut-off and
    damaged endings; packets of the last GOP are kept in memory instead of seeking back, which is unreliable
    in files without an index.
    """
    count, head_frames, tail, first_pts, end_pts = 0, 0, [], None, None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            count += 1
            if packet.pts is not None:
                first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                end_pts = max(end_pts or packet.pts, packet.pts + (packet.duration or 0))
            if packet.is_keyframe:
                tail = []
            tail.append(packet)
            if not head_frames:
                head_frames = len(stream.codec_context.decode(packet))
        if not head_frames and count:
            head_frames = len(stream.codec_context.decode(None))
            if not head_frames:
                raise Skip("no_frames", f"{count} packets but no frame decodes")
        stream.codec_context.flush_buffers()
        tail_frames = _decode_all(stream, tail)
    except Skip:
        raise
    except Exception as error:
        raise Skip("corrupt", _describe(error)) from None
    if tail and not tail_frames:
        raise Skip("corrupt", f"last {len(tail)} packets decode to no frame")
    return {"packets": count, "first_pts": first_pts, "end_pts": end_pts}


def probe_video(data: bytes) -> dict:
    """Probe an encoded video file's bytes; return num_frames, fps, duration, width, height and codec."""
    container_kind = sniff_container(data[:256])
    check = _TRUNCATION_CHECKS.get(container_kind or "")
    problem = check(data) if check else None
    if problem:
        raise Skip("truncated", problem)
    with _open(data, container_kind) as container:
        if not container.streams.video:
            raise Skip("no_video_stream", f"streams: {[s.type for s in container.streams] or 'none'}")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise Skip("no_decoder", f"this FFmpeg build has no decoder for video stream {stream.index}")
        stream.codec_context.thread_count = 1  # pool workers already use every core
        scan = _scan(container, stream)
        if not scan["packets"]:
            raise Skip("no_frames", "no video packets")
        return _describe_stream(container, stream, scan)


def _describe_stream(container: av.container.InputContainer, stream: av.video.stream.VideoStream, scan: dict) -> dict:
    rate: Fraction | None = stream.average_rate or stream.guessed_rate or stream.base_rate
    if scan["end_pts"] is not None and stream.time_base:
        duration = float((scan["end_pts"] - scan["first_pts"]) * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        duration = scan["packets"] / float(rate) if rate else 0.0
    return {
        "num_frames": scan["packets"],
        "fps": round(float(rate), 4) if rate else None,
        "duration": round(duration, 4),
        "width": stream.codec_context.width,
        "height": stream.codec_context.height,
        "codec": stream.codec_context.name,
    }


def probe_image(data: bytes) -> dict:
    """Decode an image fully (a cut-off JPEG only fails on decode) and return its width and height."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return {"width": image.width, "height": image.height}
    except UnidentifiedImageError as error:
        raise Skip("not_image", _describe(error)) from None
    except Exception as error:
        reason = "truncated" if "truncated" in str(error).lower() else "unreadable"
        raise Skip(reason, _describe(error)) from None


def _even_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Scale so the short side is ``short_side`` (never up), rounded to even numbers as yuv420p needs."""
    scale = min(1.0, short_side / min(width, height)) if short_side else 1.0
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def needs_reencode(info: dict, short_side: int | None, max_duration: float | None) -> bool:
    too_large = short_side is not None and min(info["width"], info["height"]) > short_side
    too_long = max_duration is not None and info["duration"] > max_duration
    return too_large or too_long


def reencode_video(data: bytes, info: dict, short_side: int | None, max_duration: float | None) -> bytes:
    """Re-encode to h264 mp4 with a short side of at most ``short_side``, at most ``max_duration`` seconds."""
    width, height = _even_size(info["width"], info["height"], short_side)
    frames, start = [], None
    try:
        with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
            for frame in container.decode(video=0):
                start = frame.time if start is None else start
                if max_duration is not None and frame.time is not None and frame.time - start >= max_duration:
                    break
                frames.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
        return encode_video_bytes(
            np.stack(frames), fps=info["fps"] or 25.0, codec="libx264", suffix=".mp4", options=_X264_REPEATABLE
        )
    except Exception as error:
        raise Skip("reencode_failed", _describe(error)) from None
