import io
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import numbered_frames

from data_prep.video_writer import encode_video_bytes
from vfm.data.decode import DecodeError, build_decoder, scaled_size

INDEX_SETS = [[0, 5, 17, 18, 40, 59], [3, 3, 3, 50], [59], list(range(0, 60, 7)), [30, 31, 32]]


def reference_frames(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def has_encoder(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
        return True
    except Exception:
        return False


@pytest.mark.parametrize(
    "codec,suffix,gop,options",
    [
        ("libx264", ".mp4", None, None),  # long GOP with B-frames
        ("libx264", ".mp4", 8, None),
        ("libx264", ".mkv", 8, {"x264-params": "open-gop=1"}),
        ("libx265", ".mkv", 8, None),
        ("libvpx-vp9", ".webm", 8, None),
        ("mpeg4", ".mov", 8, None),
        ("mpeg4", ".avi", 8, None),
    ],
)
def test_pyav_decoder_returns_exactly_the_sampled_frames(codec, suffix, gop, options):
    if not has_encoder(codec):
        pytest.skip(f"this PyAV build has no {codec} encoder")
    height, width = (64, 64) if codec == "libx265" else (32, 48)  # x265 needs 64 px
    frames = numbered_frames(60, height, width)
    data = encode_video_bytes(frames, fps=12, codec=codec, suffix=suffix, gop=gop, options=options)
    reference = reference_frames(data)
    decoder = build_decoder("pyav")
    for indices in INDEX_SETS:
        out, info = decoder(data, lambda info, indices=indices: indices)
        assert info.num_frames == len(reference) == 60 and info.fps == pytest.approx(12)
        assert out.shape == (len(indices), height, width, 3) and out.dtype == np.uint8
        for frame, index in zip(out, indices):
            assert np.array_equal(frame, reference[index]), f"frame {index} differs"


def test_decoders_agree_and_resize_in_the_decoder():
    data = encode_video_bytes(numbered_frames(40, 64, 128), fps=8, gop=10)
    outputs = {}
    for backend in ("pyav", "pyav_all", "decord"):
        try:
            decoder = build_decoder(backend)
        except ImportError:
            continue
        frames, info = decoder(data, lambda info: [0, 13, 27, 39], short_side=32)
        assert frames.shape == (4, 32, 64, 3)
        outputs[backend] = frames.astype(int)
    assert np.array_equal(outputs["pyav"], outputs["pyav_all"])
    if "decord" in outputs:  # another scaler: close, not bit-identical
        assert np.abs(outputs["pyav"] - outputs["decord"]).mean() < 8


def test_gop_skipping_can_be_switched_off():
    data = encode_video_bytes(numbered_frames(30), fps=8, gop=5)
    fast, _ = build_decoder("pyav")(data, lambda info: [2, 21])
    from vfm.data.decode import PyAVDecoder

    plain, _ = PyAVDecoder(skip_gops=False)(data, lambda info: [2, 21])
    assert np.array_equal(fast, plain)


def test_variable_frame_rate_is_sampled_by_time():
    frames = numbered_frames(20)
    buffer = io.BytesIO()
    times_ms = np.cumsum([0] + [40 if i % 3 else 120 for i in range(19)])  # irregular gaps
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for image, t in zip(frames, times_ms):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = buffer.getvalue()
    reference = reference_frames(data)
    out, info = build_decoder("pyav")(data, lambda info: list(range(0, info.num_frames, 3)))
    matches = [next(i for i, ref in enumerate(reference) if np.array_equal(ref, frame)) for frame in out]
    assert matches == sorted(matches) and len(set(matches)) > 1  # real frames, in time order


@pytest.mark.parametrize("payload", [b"", b"not a video at all", bytes(range(256)) * 40])
def test_garbage_raises_decode_error(payload):
    with pytest.raises(DecodeError):
        build_decoder("pyav")(payload, lambda info: [0])


def test_truncated_video_raises_or_returns_real_frames():
    data = encode_video_bytes(numbered_frames(30), fps=8)
    with pytest.raises(DecodeError):
        build_decoder("pyav")(data[: len(data) // 2], lambda info: [0, 29])


def test_scaled_size_keeps_aspect():
    assert scaled_size(596, 336, 224) == (397, 224)
    assert scaled_size(336, 596, 224) == (224, 397)
    assert scaled_size(100, 50, None) == (100, 50)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown video backend"):
        build_decoder("opencv")
