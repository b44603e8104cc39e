"""make_shards: broken inputs are skipped with a reason, good clips land once, a killed run resumes."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from data_prep.make_shards import Row, ShardError, iter_rows, main, make_shards, plan_shards
from data_prep.video_writer import encode_video, encode_video_bytes

REPO = Path(__file__).resolve().parents[1]
VIDEO_FIELDS = {"num_frames", "fps", "duration", "width", "height", "codec"}


def frames(num_frames: int = 8, height: int = 48, width: int = 64) -> np.ndarray:
    """A moving gradient: cheap to encode and different in every frame."""
    t, y, x = np.ogrid[:num_frames, :height, :width]
    base = ((x * 4 + y * 2 + t * 8) % 256).astype(np.uint8)
    return np.stack([base, np.roll(base, 5, axis=2), 255 - base], axis=-1)


@pytest.fixture(scope="module")
def clip() -> bytes:
    return encode_video_bytes(frames(), fps=8.0)


def faststart_mp4(path: Path) -> None:
    """An mp4 with the index (moov) before the data, as web videos are usually published."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for image in frames():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def audio_only_mp4(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_samples(out: Path) -> dict[str, dict]:
    """key -> {ext: bytes, "shard": name}; fails if any member appears twice anywhere."""
    samples: dict[str, dict] = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                sample = samples.setdefault(key, {"shard": tar_path.name})
                assert extension not in sample, f"{member.name} written twice"
                sample[extension] = tar.extractfile(member).read()
    for sample in samples.values():
        sample["json"] = json.loads(sample["json"])
    return samples


def read_skipped(out: Path) -> dict[str, str]:
    with (out / "skipped.csv").open(newline="") as handle:
        return {row["source"]: row["reason"] for row in csv.DictReader(handle)}


def check_stats(out: Path, samples: dict[str, dict]) -> dict:
    stats = json.loads((out / "stats.json").read_text())
    assert stats["written"] == len(samples) == sum(shard["count"] for shard in stats["shards"])
    assert sum(stats["splits"].values()) == len(samples)
    assert sorted(shard["name"] for shard in stats["shards"]) == sorted(p.name for p in out.glob("*.tar"))
    assert sum(stats["skipped"].values()) == len(read_skipped(out))
    assert not list(out.rglob("*.tmp"))
    return stats


def test_broken_inputs_are_skipped_with_a_reason(tmp_path: Path, clip: bytes) -> None:
    media = tmp_path / "media"
    media.mkdir()
    for name in ("good0.mp4", "good1.mp4", "good2.mp4", "blank_caption.mp4", "space_caption.mp4"):
        (media / name).write_bytes(clip)
    (media / "empty.mp4").write_bytes(b"")
    (media / "cut_moov_at_end.mp4").write_bytes(clip[: len(clip) * 2 // 3])
    faststart_mp4(media / "faststart.mp4")
    (media / "cut_faststart.mp4").write_bytes((media / "faststart.mp4").read_bytes()[:-200])
    (media / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (media / "text.mp4").write_text("this is not a video\n" * 20)
    audio_only_mp4(media / "audio.mp4")
    rows = [
        [name, f"caption of {name}"]
        for name in (
            "good0.mp4",
            "good1.mp4",
            "good2.mp4",
            "faststart.mp4",
            "empty.mp4",
            "cut_moov_at_end.mp4",
            "cut_faststart.mp4",
            "random.mp4",
            "text.mp4",
            "audio.mp4",
            "missing.mp4",
        )
    ]
    rows += [["blank_caption.mp4", ""], ["space_caption.mp4", "  \t "]]
    rows += [[str(media / "good2.mp4"), "an absolute path"]]
    out = tmp_path / "out"
    stats = make_shards(
        write_csv(tmp_path / "rows.csv", ["video", "caption"], rows),
        media,
        out,
        samples_per_shard=3,
        workers=1,
        show_progress=False,
    )
    assert read_skipped(out) == {
        "empty.mp4": "empty_file",
        "cut_moov_at_end.mp4": "truncated",
        "cut_faststart.mp4": "truncated",
        "random.mp4": "not_video",
        "text.mp4": "not_video",
        "audio.mp4": "no_video_stream",
        "missing.mp4": "missing",
        "blank_caption.mp4": "empty_caption",
        "space_caption.mp4": "empty_caption",
    }
    samples = read_samples(out)
    assert sorted(sample["json"]["source"] for sample in samples.values()) == sorted(
        ["good0.mp4", "good1.mp4", "good2.mp4", "faststart.mp4", str(media / "good2.mp4")]
    )
    assert check_stats(out, samples)["skipped"] == {
        "empty_caption": 2,
        "empty_file": 1,
        "missing": 1,
        "no_video_stream": 1,
        "not_video": 2,
        "truncated": 2,
    }
    meta = samples["000000000"]["json"]
    assert meta == {
        "caption": "caption of good0.mp4",
        "source": "good0.mp4",
        "id": "good0.mp4",
        "num_frames": 8,
        "fps": 8.0,
        "duration": 1.0,
        "width": 64,
        "height": 48,
        "codec": "h264",
    }
    assert samples["000000000"]["mp4"] == clip  # the media bytes go in untouched
    assert stats["shards"][0]["name"] == "train-000000.tar" and set(stats["splits"]) == {"train"}


@pytest.mark.parametrize(
    ("codec", "suffix", "name"),
    [
        ("libx264", ".mp4", "h264"),
        ("libx265", ".mkv", "hevc"),
        ("libvpx-vp9", ".webm", "vp9"),
        ("mpeg4", ".mov", "mpeg4"),
        ("mpeg4", ".avi", "mpeg4"),
    ],
)
def test_each_codec_and_container(tmp_path: Path, codec: str, suffix: str, name: str) -> None:
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    (tmp_path / "media").mkdir()
    # 64 x 64: libx265 needs at least its 64-pixel block
    encode_video(frames(12, 64, 64), tmp_path / "media" / f"clip{suffix.upper()}", codec=codec, gop=4)
    truncated = (tmp_path / "media" / f"clip{suffix.upper()}").read_bytes()[:-40]
    (tmp_path / "media" / f"cut{suffix}").write_bytes(truncated)
    csv_path = write_csv(
        tmp_path / "rows.csv",
        ["video", "caption"],
        [[f"clip{suffix.upper()}", "a clip"], [f"cut{suffix}", "a cut clip"]],
    )
    stats = make_shards(csv_path, tmp_path / "media", tmp_path / "out", workers=1, show_progress=False)
    sample = read_samples(tmp_path / "out")["000000000"]
    assert sample["json"]["codec"] == name and sample["json"]["num_frames"] == 12
    assert (sample["json"]["width"], sample["json"]["height"]) == (64, 64)
    assert suffix[1:] in sample  # member extension = the file's lowercase suffix
    assert stats["skipped"] == {"truncated": 1}


def test_webvid_layout(tmp_path: Path, clip: bytes) -> None:
    for page_dir, videoid in (("000001_000050", "1001"), ("000051_000100", "1051")):
        (tmp_path / "videos" / page_dir).mkdir(parents=True)
        (tmp_path / "videos" / page_dir / f"{videoid}.mp4").write_bytes(clip)
    rows = [
        ["1001", "http://x/1001.mp4", "PT00H00M01S", "000001_000050", "a red circle moves left"],
        ["1051", "http://x/1051.mp4", "PT00H00M01S", "000051_000100", "a blue square grows"],
        ["1099", "http://x/1099.mp4", "PT00H00M01S", "000051_000100", "never downloaded"],
    ]
    header = ["videoid", "contentUrl", "duration", "page_dir", "name"]
    csv_path = write_csv(tmp_path / "results.csv", header, rows)
    assert (
        main(
            [
                "--csv",
                str(csv_path),
                "--videos",
                str(tmp_path / "videos"),
                "--out",
                str(tmp_path / "out"),
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    meta = read_samples(tmp_path / "out")["000000001"]["json"]
    assert meta["videoid"] == "1051" and meta["caption"] == "a blue square grows"
    assert meta["source"] == "000051_000100/1051.mp4" and meta["page_dir"] == "000051_000100"
    assert meta["contentUrl"] == "http://x/1051.mp4" and meta["csv_duration"] == "PT00H00M01S"
    assert meta["duration"] == 1.0 and "id" not in meta
    assert read_skipped(tmp_path / "out") == {"000051_000100/1099.mp4": "missing"}


def test_video_label_csv(tmp_path: Path, clip: bytes) -> None:
    (tmp_path / "clips").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "clips" / name).write_bytes(clip)
    csv_path = write_csv(tmp_path / "k.csv", ["video", "label"], [["a.mp4", "juggling"], ["b.mp4", " "]])
    stats = make_shards(csv_path, tmp_path / "clips", tmp_path / "out", workers=1, show_progress=False)
    meta = read_samples(tmp_path / "out")["000000000"]["json"]
    assert meta["label"] == "juggling" and "caption" not in meta and VIDEO_FIELDS <= set(meta)
    assert stats["skipped"] == {"empty_label": 1}


def test_image_caption_csv(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30), "red").save(tmp_path / "images" / "red.jpg")
    Image.new("RGB", (20, 10), "blue").save(tmp_path / "images" / "blue.PNG")
    (tmp_path / "images" / "fake.webp").write_text("not an image")
    buffer = io.BytesIO()
    Image.fromarray(frames(1, 64, 64)[0]).save(buffer, format="JPEG")
    (tmp_path / "images" / "cut.jpg").write_bytes(buffer.getvalue()[:-300])
    rows = [["red.jpg", "a red image"], ["blue.PNG", "a blue image"], ["fake.webp", "x"], ["cut.jpg", "y"]]
    csv_path = write_csv(tmp_path / "images.csv", ["image", "caption"], rows)
    stats = make_shards(csv_path, tmp_path / "images", tmp_path / "out", workers=1, show_progress=False)
    samples = read_samples(tmp_path / "out")
    assert samples["000000000"]["json"] == {
        "caption": "a red image",
        "source": "red.jpg",
        "id": "red.jpg",
        "width": 40,
        "height": 30,
    }
    assert "png" in samples["000000001"] and samples["000000001"]["json"]["width"] == 20
    assert stats["skipped"] == {"not_image": 1, "truncated": 1}


def test_split_column_decides_split_and_extra_columns_pass_through(tmp_path: Path, clip: bytes) -> None:
    (tmp_path / "media").mkdir()
    header = ["video", "caption", "split", "reverse_caption", "motion", "num_objects"]
    rows = []
    for index, split in enumerate(["train"] * 5 + ["val"] * 3 + ["test"] * 2):
        (tmp_path / "media" / f"{index}.mp4").write_bytes(clip)
        rows.append([f"{index}.mp4", f"caption {index}", split, f"reversed {index}", "left", "2"])
    stats = make_shards(
        write_csv(tmp_path / "s.csv", header, rows),
        tmp_path / "media",
        tmp_path / "out",
        samples_per_shard=2,
        workers=2,
        show_progress=False,
    )
    samples = read_samples(tmp_path / "out")
    assert stats["splits"] == {"test": 2, "train": 5, "val": 3}
    assert [shard["name"] for shard in stats["shards"]] == [
        "test-000000.tar",
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
        "val-000000.tar",
        "val-000001.tar",
    ]
    for key, sample in samples.items():
        assert sample["shard"].split("-")[0] == sample["json"]["split"] == rows[int(key)][2]
        assert sample["json"]["reverse_caption"] == f"reversed {int(key)}"
        assert sample["json"]["num_objects"] == "2"  # pass-through columns stay strings
    check_stats(tmp_path / "out", samples)


def test_val_fraction_is_a_stable_hash_of_the_id(tmp_path: Path, clip: bytes) -> None:
    (tmp_path / "media").mkdir()
    names = [f"clip{index}.mp4" for index in range(20)]
    for name in names:
        (tmp_path / "media" / name).write_bytes(clip)
    splits = []
    for run, order in enumerate([names, names[::-1]]):  # another row order and seed: same val clips
        csv_path = write_csv(tmp_path / f"{run}.csv", ["video", "caption"], [[name, "c"] for name in order])
        make_shards(
            csv_path,
            tmp_path / "media",
            tmp_path / f"out{run}",
            samples_per_shard=4,
            workers=1,
            val_fraction=0.3,
            seed=run,
            show_progress=False,
        )
        samples = read_samples(tmp_path / f"out{run}").values()
        splits.append({sample["json"]["source"]: sample["shard"].split("-")[0] for sample in samples})
    assert splits[0] == splits[1] and set(splits[0].values()) == {"train", "val"}


def test_plan_streams_every_row_once_into_numbered_shuffled_shards() -> None:
    rows = [
        Row(
            index,
            f"{index}.mp4",
            "video",
            {"caption": "c"},
            ("id", str(index)),
            "val" if index % 5 == 0 else "train",
            {},
        )
        for index in range(2000)
    ]  # > one shuffle window
    plan = list(plan_shards(iter(rows), 4, seed=0))
    assert sorted(row.index for _, _, shard in plan for row in shard) == list(range(2000))
    assert all(0 < len(shard) <= 4 and {row.split for row in shard} == {split} for _, split, shard in plan)
    for split, count in (("train", 400), ("val", 100)):
        assert sorted(name for name, s, _ in plan if s == split) == [f"{split}-{i:06d}" for i in range(count)]
    assert plan == list(plan_shards(iter(rows), 4, seed=0)) != list(plan_shards(iter(rows), 4, seed=1))
    first = [row.index for row in plan[0][2]]
    assert first != sorted(first) or max(first) - min(first) > 4  # rows are mixed, not CSV chunks


def test_reencode_to_short_side_and_max_duration(tmp_path: Path, clip: bytes) -> None:
    (tmp_path / "media").mkdir()
    encode_video(frames(16, 48, 64), tmp_path / "media" / "big.webm", codec="libvpx-vp9", fps=8.0)
    small = encode_video_bytes(frames(4, 24, 32), fps=8.0)
    (tmp_path / "media" / "small.mp4").write_bytes(small)
    rows = [["big.webm", "big"], ["small.mp4", "small"]]
    csv_path = write_csv(tmp_path / "r.csv", ["video", "caption"], rows)
    make_shards(
        csv_path, tmp_path / "media", tmp_path / "out", workers=1, short_side=32, max_duration=1.0, show_progress=False
    )
    big, kept = read_samples(tmp_path / "out")["000000000"], read_samples(tmp_path / "out")["000000001"]
    assert "mp4" in big and big["json"]["codec"] == "h264" and big["json"]["source"] == "big.webm"
    assert (big["json"]["width"], big["json"]["height"]) == (42, 32)
    assert big["json"]["num_frames"] == 8 and big["json"]["duration"] == pytest.approx(1.0)
    with av.open(io.BytesIO(big["mp4"])) as container:
        assert next(container.decode(video=0)).to_ndarray(format="rgb24").shape == (32, 42, 3)
    assert kept["mp4"] == small  # already within limits: stored as it was


def test_changed_options_on_rerun_fail_clearly(tmp_path: Path, clip: bytes) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.mp4").write_bytes(clip)
    csv_path = write_csv(tmp_path / "a.csv", ["video", "caption"], [["a.mp4", "a"]] * 3)
    first = make_shards(
        csv_path, tmp_path / "media", tmp_path / "out", samples_per_shard=2, workers=1, show_progress=False
    )
    with pytest.raises(ShardError, match="samples_per_shard: 2 before, 3 now"):
        make_shards(csv_path, tmp_path / "media", tmp_path / "out", samples_per_shard=3, show_progress=False)
    assert (
        make_shards(csv_path, tmp_path / "media", tmp_path / "out", samples_per_shard=2, show_progress=False) == first
    )  # same options: nothing to redo, same stats


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    bad = write_csv(tmp_path / "bad.csv", ["file", "text"], [["a.mp4", "a"]])
    with pytest.raises(ShardError, match=r"found columns \['file', 'text'\]; accepted formats: WebVid"):
        make_shards(bad, tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="CSV not found"):
        make_shards(tmp_path / "nope.csv", tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="media root not found"):
        make_shards(bad, tmp_path / "no_media", tmp_path / "out")
    assert main(["--csv", str(bad), "--videos", str(tmp_path), "--out", str(tmp_path / "out")]) == 2


def test_sigkill_then_rerun_writes_every_good_clip_once(tmp_path: Path, clip: bytes) -> None:
    media = tmp_path / "media"
    media.mkdir()
    rows = []
    for index in range(30):
        (media / f"{index}.mp4").write_bytes(clip)
        rows.append([f"{index}.mp4", f"clip {index}"])
    rows += [["missing.mp4", "gone"], ["0.mp4", ""]]
    csv_path = write_csv(tmp_path / "rows.csv", ["video", "caption"], rows)
    # A read that never returns (as on a hung network disk) holds the run in the 4th shard, so the kill
    # lands mid-shard after three complete ones, every time.
    plan = list(plan_shards(iter_rows(csv_path, 0.0), 3, seed=0))
    stuck = next(row.source for row in plan[3][2] if row.source[0].isdigit() and row.text["caption"])
    (media / stuck).unlink()
    os.mkfifo(media / stuck)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "data_prep.make_shards",
        "--csv",
        str(csv_path),
        "--videos",
        str(media),
        "--out",
        str(out),
        "--samples-per-shard",
        "3",
        "--no-progress",
    ]
    process = subprocess.Popen([*command, "--workers", "1"], cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not list(out.glob("train-000003.tar.*.tmp")) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.01)
        done = {path.name: path.stat().st_ino for path in out.glob("*.tar")}
        assert sorted(done) == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL and not (out / "stats.json").exists()
    (media / stuck).unlink()
    (media / stuck).write_bytes(clip)

    subprocess.run([*command, "--workers", "2"], cwd=REPO, check=True, capture_output=True, timeout=120)
    samples = read_samples(out)
    assert sorted(sample["json"]["source"] for sample in samples.values()) == sorted(r[0] for r in rows[:30])
    assert check_stats(out, samples)["skipped"] == {"empty_caption": 1, "missing": 1}
    assert {name: (out / name).stat().st_ino for name in done} == done  # finished shards were not redone
    shutil.rmtree(media)  # a rerun of a finished job reads no media at all
    media.mkdir()
    assert make_shards(csv_path, media, out, 3, show_progress=False)["written"] == 30
