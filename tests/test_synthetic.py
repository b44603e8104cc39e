"""The embedded synthetic corpus: determinism, WebVid layout, held-out split, captions true to the pixels."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from data_prep import synthetic as syn

TINY = dict(
    num_train=6,
    num_val=2,
    num_long=2,
    num_long_val=1,
    num_images=6,
    num_image_val=2,
    size=32,
    long_size=32,
    progress=False,
)
STYLES = [(template, definite) for template in range(len(syn.CHAINS)) for definite in (False, True)]


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def digest(directory: Path) -> dict[str, str]:
    """Hash of every file under ``directory``, by relative path."""
    return {
        str(p.relative_to(directory)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    syn.make_corpus(out, seed=0, workers=1, **TINY)
    return out


def plans(kind: str, count: int, val: bool, shape_hw: tuple[int, int] = (64, 64)) -> list[tuple[dict, int]]:
    """(scene, num_frames) pairs planned as the corpus plans them (seed 0), without rendering."""
    held, out = syn.heldout(0)[0], []
    for index in range(count):
        rng = np.random.default_rng([0, 99, int(val), index])
        if kind == "long":
            num_frames = int(rng.integers(60, 481))
            options = dict(
                num_objects=int(rng.integers(2, 4)), num_events=int(rng.integers(4, 13)), min_move=0.4, sequential=False
            )
        else:
            num_frames, num_objects = int(rng.choice([24, 32])), 1 + int(rng.random() < 0.5)
            options = dict(num_objects=num_objects, num_events=num_objects, min_move=0.45, sequential=True)
        scene = syn.best_scene(rng, num_frames, held=held, val=val, shape_hw=shape_hw, **options)
        out.append((scene, num_frames))
    return out


def test_same_seed_same_corpus_whatever_the_workers(corpus, tmp_path):
    syn.make_corpus(tmp_path / "again", seed=0, workers=2, **TINY)
    assert digest(tmp_path / "again") == digest(corpus)  # CSVs and every mp4/jpg, byte for byte
    syn.make_corpus(tmp_path / "other", seed=1, workers=1, **{**TINY, "num_long": 0, "num_long_val": 0})
    assert read_csv(tmp_path / "other" / "clips.csv") != read_csv(corpus / "clips.csv")


def test_webvid_layout_and_media_decode(corpus):
    columns, rows = read_csv(corpus / "clips.csv")
    assert columns == [
        "videoid",
        "contentUrl",
        "duration",
        "page_dir",
        "name",
        "split",
        "reverse_caption",
        "motion",
        "shape",
        "colour",
        "num_objects",
        "events",
        "fps",
        "num_frames",
    ]
    long_columns, long_rows = read_csv(corpus / "long.csv")
    assert long_columns == columns[:7] + ["swapped_caption"] + columns[7:]
    classes = json.loads((corpus / "classes.json").read_text())
    assert set(classes) == {"motion", "shape", "colour"} and len(classes["colour"]) == 6
    assert [row["split"] for row in rows] == ["train"] * 6 + ["val"] * 2
    assert [row["split"] for row in long_rows] == ["train"] * 2 + ["val"]
    for kind, row in [("clips", r) for r in rows] + [("long", r) for r in long_rows]:
        assert row["contentUrl"] == f"synthetic://{kind}/{row['videoid']}.mp4"
        seconds = int(row["num_frames"]) // int(row["fps"])
        assert row["duration"] == f"PT00H{seconds // 60:02d}M{seconds % 60:02d}S"
        assert row["motion"] in classes["motion"] and row["shape"] in classes["shape"]
        assert row["colour"] in classes["colour"]
        with av.open(str(corpus / "videos" / row["page_dir"] / f"{row['videoid']}.mp4")) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert len(frames) == int(row["num_frames"]) and frames[0].shape == (32, 32, 3)
    assert all(3 <= int(r["num_frames"]) / int(r["fps"]) <= 4 and r["fps"] == "8" for r in rows)
    assert all(60 <= int(r["num_frames"]) / int(r["fps"]) <= 240 for r in long_rows)
    image_columns, images = read_csv(corpus / "images.csv")
    assert image_columns[:5] == ["image", "caption", "split", "shape", "colour"]
    assert all(Image.open(corpus / row["image"]).size == (32, 32) for row in images)


def test_captions_columns_agree_with_events(corpus):
    for name in ("clips.csv", "long.csv"):
        for row in read_csv(corpus / name)[1]:
            events, num_frames = json.loads(row["events"]), int(row["num_frames"])
            style = next(s for s in STYLES if syn.describe(events, s) == row["name"])
            assert row["reverse_caption"] == syn.reverse_caption(events, num_frames, style)
            assert (row["motion"], row["shape"], row["colour"]) == (
                events[0]["motion"],
                events[0]["shape"],
                events[0]["colour"],
            )
            assert int(row["num_objects"]) >= len({event["object"] for event in events})


def test_heldout_triples_never_in_training(corpus):
    held, held_pairs = syn.heldout(0)
    assert 0.1 < len(held) / len(syn.VALID_TRIPLES) < 0.2 and 0.1 < len(held_pairs) / len(syn.PAIRS) < 0.2
    for kind in ("short", "long"):
        for val in (False, True):
            for scene, _ in plans(kind, 150 if kind == "short" else 40, val):
                triples = [(e["colour"], e["shape"], e["motion"]) for e in scene["events"]]
                assert (triples[0] in held) == val and not held & set(triples[1:])
    for name in ("clips.csv", "long.csv"):
        for row in read_csv(corpus / name)[1]:
            triples = {(e["colour"], e["shape"], e["motion"]) for e in json.loads(row["events"])}
            assert ((row["colour"], row["shape"], row["motion"]) in held) == (row["split"] == "val")
            assert row["split"] == "val" or not held & triples
    for row in read_csv(corpus / "images.csv")[1]:
        named = {pair for pair in syn.PAIRS if " ".join(pair) in row["caption"]}
        assert ((row["colour"], row["shape"]) in held_pairs) == (row["split"] == "val")
        assert row["split"] == "val" or not named & held_pairs


def test_reverse_twice_is_identity_and_reverses_each_motion():
    for scene, num_frames in plans("short", 20, False) + plans("long", 10, False):
        events = scene["events"]
        backwards = syn.reverse_events(events, num_frames)
        assert syn.reverse_events(backwards, num_frames) == events
        assert [e["motion"] for e in backwards] == [syn.REVERSE[e["motion"]] for e in reversed(events)]
        for style in STYLES:
            caption = syn.describe(events, style)
            assert syn.reverse_caption(backwards, num_frames, style) == caption
            assert syn.reverse_caption(events, num_frames, style) != caption
    one = [
        {
            "object": 0,
            "colour": "red",
            "shape": "triangle",
            "motion": "left",
            "synonym": 1,
            "start_frame": 2,
            "end_frame": 20,
        }
    ]
    assert syn.describe(one, (0, False)) == "a red triangle slides left"
    assert syn.reverse_caption(one, 24, (0, False)) == "a red triangle slides right"


def turn_degrees(before: np.ndarray, after: np.ndarray, folds: int) -> float:
    """Rotation between two coverage images of an n-fold symmetric shape, positive clockwise on screen.

    The phase of the complex moment sum(cover * z**n) turns n times as fast as the shape (y points down).
    """
    phases = []
    for cover in (before, after):
        ys, xs = np.mgrid[0 : cover.shape[0], 0 : cover.shape[1]]
        centre_x, centre_y = (cover * xs).sum() / cover.sum(), (cover * ys).sum() / cover.sum()
        phases.append(np.angle((cover * ((xs - centre_x) + 1j * (ys - centre_y)) ** folds).sum()))
    return float(np.degrees(np.angle(np.exp(1j * (phases[1] - phases[0]))))) / folds


def test_rendered_motion_is_what_the_caption_says():
    size, seen = 128, set()
    ys, xs = np.mgrid[0:size, 0:size]
    for scene, num_frames in plans("short", 60, False, shape_hw=(size, size)):
        tracks = syn.scene_tracks(scene, num_frames)
        for event in scene["events"]:
            obj, start, end, motion = (event[key] for key in ("object", "start_frame", "end_frame", "motion"))
            black = np.zeros((size, size, 3), np.uint8)
            frames = syn.render(tracks[obj : obj + 1], [scene["objects"][obj]], black)  # the actor alone
            cover = frames.max(axis=-1) / max(syn.COLOURS[event["colour"]])  # coverage, whatever the colour
            mass = cover.sum(axis=(1, 2))
            moments = np.stack([(cover * grid).sum(axis=(1, 2)) for grid in (xs, ys)], 1)
            centre = moments / np.maximum(mass, 1e-9)[:, None]  # frames without the object: never used
            if motion in syn.MOVES:
                axis, sign = syn.MOVES[motion]
                assert sign * (centre[end, axis] - centre[start, axis]) > 0.4 * size  # about half the frame
            elif motion in ("grow", "shrink"):
                assert (mass[end] / mass[start]) ** (1 if motion == "grow" else -1) > 2.5
            elif motion in ("appear", "vanish"):
                hidden, shown = (start, end) if motion == "appear" else (end, start)
                assert mass[hidden] < 1 < mass[shown]
            else:
                folds = {"square": 4, "triangle": 3, "star": 5}[event["shape"]]
                turn = sum(turn_degrees(cover[t], cover[t + 1], folds) for t in range(start, end))
                assert turn * (1 if motion == "rotate_cw" else -1) > 80
            seen.add(motion)
    assert seen == set(syn.MOTIONS)


def test_long_videos_chain_consistent_events():
    for scene, num_frames in plans("long", 30, False):
        events, tracks = scene["events"], syn.scene_tracks(scene, num_frames)
        assert 4 <= len(events) <= 12 and 2 <= len(scene["objects"]) <= 3
        assert all(a["end_frame"] < b["start_frame"] for a, b in zip(events, events[1:]))
        for event in events:  # a vanished object appears before doing anything else
            visible = tracks[event["object"], event["start_frame"], 4]
            assert visible == (0.0 if event["motion"] == "appear" else 1.0)
        x, y, radius = tracks[..., 0], tracks[..., 1], tracks[..., 2]
        assert (syn.R_MIN - 1e-9 <= radius).all() and (radius <= syn.R_MAX + 1e-9).all()
        assert (x - 1.15 * radius > 0).all() and (x + 1.15 * radius < 1).all()  # inside the frame
        assert (y - 1.15 * radius > 0).all() and (y + 1.15 * radius < 1).all()
        caption = syn.describe(events, (1, True))  # "first ..., then ..., finally ..."
        assert caption.startswith("first ") and caption.count(", then ") == len(events) - 2
        phrases = [f"the {e['colour']} {e['shape']} {syn.VERBS[e['motion']][e['synonym']]}" for e in events]
        position = 0
        for phrase in phrases:  # every event is told, in the order it happens
            position = caption.find(phrase, position)
            assert position >= 0
            position += len(phrase)
        swapped = syn.swap_events(np.random.default_rng(0), events)
        assert sorted(map(json.dumps, swapped)) == sorted(map(json.dumps, events))
        assert syn.describe(swapped, (1, True)) != caption


def test_long_csv_swapped_caption_differs(corpus):
    for row in read_csv(corpus / "long.csv")[1]:
        events = json.loads(row["events"])
        assert 4 <= len(events) <= 12 and row["swapped_caption"] != row["name"]
        assert row["swapped_caption"] != row["reverse_caption"]


def test_webvid_like_clips(tmp_path):
    summary = syn.make_corpus(
        tmp_path, seed=0, num_train=1, num_val=0, webvid_like=True, gop=25, workers=1, progress=False
    )
    assert set(summary["csv"]) == {"clips"} and not (tmp_path / "long.csv").exists()
    (row,) = read_csv(tmp_path / "clips.csv")[1]
    with av.open(str(tmp_path / "videos" / row["page_dir"] / f"{row['videoid']}.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (596, 336)
        assert stream.average_rate == 25
        keyframes = [packet.is_keyframe for packet in container.demux(stream) if packet.size]
    assert 10 * 25 <= len(keyframes) == int(row["num_frames"]) <= 20 * 25
    assert sum(keyframes) >= len(keyframes) // 25  # one keyframe every 25 frames at least


def test_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        syn.make_corpus(tmp_path, size=33, **{k: v for k, v in TINY.items() if k != "size"})
