"""Deterministic synthetic video-text corpus in WebVid's layout: the project's embedded default data.

Coloured shapes on low-contrast textured backgrounds move, grow, shrink, rotate, appear or vanish;
captions say what happens and in which order, so a time-reversed caption is a hard negative. Every
item is seeded by (seed, subset, index) alone, so the output does not depend on the worker count.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from data_prep.video_writer import encode_video

COLOURS = {
    "red": (225, 35, 35),
    "green": (30, 175, 60),
    "blue": (35, 85, 235),
    "yellow": (240, 220, 30),
    "purple": (150, 50, 215),
    "orange": (250, 135, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "rotate_cw", "rotate_ccw", "appear", "vanish")
REVERSE = {
    "left": "right",
    "right": "left",
    "up": "down",
    "down": "up",
    "grow": "shrink",
    "shrink": "grow",
    "rotate_cw": "rotate_ccw",
    "rotate_ccw": "rotate_cw",
    "appear": "vanish",
    "vanish": "appear",
}
# Synonyms of opposite motions are index-aligned, so a reversed caption keeps the same word choice.
VERBS = {
    "left": ("moves to the left", "slides left", "goes left"),
    "right": ("moves to the right", "slides right", "goes right"),
    "up": ("moves up", "slides up", "goes up"),
    "down": ("moves down", "slides down", "goes down"),
    "grow": ("grows", "gets bigger", "expands"),
    "shrink": ("shrinks", "gets smaller", "contracts"),
    "rotate_cw": ("rotates clockwise", "spins clockwise", "turns clockwise"),
    "rotate_ccw": ("rotates counterclockwise", "spins counterclockwise", "turns counterclockwise"),
    "appear": ("appears", "pops up", "fades in"),
    "vanish": ("vanishes", "disappears", "fades out"),
}
ONE_EVENT = ("{}", "a clip in which {}", "in this video {}")
CHAINS = (
    ("{}", ", then {}", ", then {}"),
    ("first {}", ", then {}", ", finally {}"),
    ("{}", ", then {}", ", and finally {}"),
    ("to begin, {}", "; next, {}", "; at the end, {}"),
)
IMAGE_TEMPLATES = (
    ("{}", "a picture of {}", "an image of {}"),
    ("{} and {}", "{} next to {}", "a picture of {} and {}"),
)
MOVES = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}  # motion -> (axis, sign), y down
# Radii are fractions of the short side; grow/shrink change the radius by 1.7-2x within [R_MIN, R_MAX].
R_MIN, R_SMALL, R_BIG, R_MAX = 0.07, 0.1, 0.15, 0.19
MAX_TURN = 24.0  # degrees per frame: below half the symmetry period of the star (36), so direction is visible
VALID_TRIPLES = [
    (c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS if not (s == "circle" and m.startswith("rotate"))
]  # a rotating circle looks still
_VALID = set(VALID_TRIPLES)
PAIRS = [(c, s) for c in COLOURS for s in SHAPES]
SUBSETS = {
    f"{kind}/{split}": 1 + 2 * k + v
    for k, kind in enumerate(("clips", "long", "images", "webvid"))
    for v, split in enumerate(("train", "val"))
}  # id prefixes and seeds: fixed, do not reorder
VIDEO_COLUMNS = [
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
LONG_COLUMNS = VIDEO_COLUMNS[:7] + ["swapped_caption"] + VIDEO_COLUMNS[7:]
IMAGE_COLUMNS = ["image", "caption", "split", "shape", "colour", "num_objects"]
# mbtree makes this libx264 build nondeterministic even with one thread; without it the bytes repeat.
X264_OPTIONS = {"threads": "1", "preset": "veryfast", "x264-params": "mbtree=0"}


def heldout(seed: int) -> tuple[set[tuple[str, str, str]], set[tuple[str, str]]]:
    """The ~15% of (colour, shape, motion) triples and (colour, shape) pairs kept for validation only."""
    rng = np.random.default_rng([seed, 0])
    triples = rng.choice(len(VALID_TRIPLES), round(0.15 * len(VALID_TRIPLES)), replace=False)
    pairs = rng.choice(len(PAIRS), round(0.15 * len(PAIRS)), replace=False)
    return {VALID_TRIPLES[i] for i in triples}, {PAIRS[i] for i in pairs}


def describe(events: list[dict], style: tuple[int, bool]) -> str:
    """Caption of an event chain; ``style`` is (template index, always use "the")."""
    template, definite = style
    seen: set[int] = set()
    clauses = []
    for event in events:
        article = "the" if definite or event["object"] in seen else _indefinite(event["colour"])
        seen.add(event["object"])  # "a" on first mention, "the" after
        verb = VERBS[event["motion"]][event["synonym"]]
        clauses.append(f"{article} {event['colour']} {event['shape']} {verb}")
    if len(clauses) == 1:
        return ONE_EVENT[template % len(ONE_EVENT)].format(clauses[0])
    first, middle, last = CHAINS[template % len(CHAINS)]
    last = middle if len(clauses) == 2 else last
    middles = "".join(middle.format(clause) for clause in clauses[1:-1])
    return first.format(clauses[0]) + middles + last.format(clauses[-1])


def _indefinite(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def reverse_events(events: list[dict], num_frames: int) -> list[dict]:
    """The events of the clip played backwards: order reversed, each motion inverted, frames mirrored."""
    return [
        dict(
            event,
            motion=REVERSE[event["motion"]],
            start_frame=num_frames - 1 - event["end_frame"],
            end_frame=num_frames - 1 - event["start_frame"],
        )
        for event in reversed(events)
    ]


def reverse_caption(events: list[dict], num_frames: int, style: tuple[int, bool]) -> str:
    return describe(reverse_events(events, num_frames), style)


def swap_events(rng: np.random.Generator, events: list[dict]) -> list[dict] | None:
    """Events with two of them exchanged, chosen among pairs that say different things (None if none)."""
    key = lambda e: (e["object"], e["motion"])
    candidates = [(i, j) for i, j in combinations(range(len(events)), 2) if key(events[i]) != key(events[j])]
    if not candidates:
        return None
    i, j = candidates[rng.integers(len(candidates))]
    swapped = list(events)
    swapped[i], swapped[j] = events[j], events[i]
    return swapped


# A state is [x, y, radius, angle in degrees (clockwise on screen), alpha]; x, y are fractions of the frame.
def _bounds(shape_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Centre limits per axis (x, y) that keep even the largest object inside the frame."""
    margin = 1.2 * R_MAX * min(shape_hw) / np.array([shape_hw[1], shape_hw[0]])  # triangle tips: 1.15 radii
    return margin, 1.0 - margin


def _initial_state(
    rng: np.random.Generator, motion: str | None, shape_hw: tuple[int, int], min_move: float
) -> np.ndarray:
    """A random state from which ``motion`` can be done (any visible state for None)."""
    lo, hi = _bounds(shape_hw)
    xy = rng.uniform(lo, hi)
    if motion in MOVES:
        axis, sign = MOVES[motion]
        xy[axis] = rng.uniform(lo[axis] + min_move * (sign < 0), hi[axis] - min_move * (sign > 0))
    radius = {"grow": (0.08, R_SMALL), "shrink": (R_BIG, R_MAX)}.get(motion, (0.09, 0.15))
    return np.array([*xy, rng.uniform(*radius), rng.uniform(0, 360), 0.0 if motion == "appear" else 1.0])


def _feasible(state: np.ndarray, motion: str, shape_hw: tuple[int, int], min_move: float) -> bool:
    if state[4] == 0.0 or motion == "appear":
        return state[4] == 0.0 and motion == "appear"  # a vanished object must appear before anything else
    if motion in MOVES:
        lo, hi = _bounds(shape_hw)
        axis, sign = MOVES[motion]
        return (state[axis] - lo[axis] if sign < 0 else hi[axis] - state[axis]) >= min_move
    return {"grow": state[2] <= R_SMALL + 1e-9, "shrink": state[2] >= R_BIG - 1e-9}.get(motion, True)


def _end_state(
    rng: np.random.Generator, state: np.ndarray, motion: str, shape_hw: tuple[int, int], min_move: float, steps: int
) -> np.ndarray:
    end = state.copy()
    lo, hi = _bounds(shape_hw)
    if motion in MOVES:
        axis, sign = MOVES[motion]
        end[axis] = (
            rng.uniform(lo[axis], state[axis] - min_move) if sign < 0 else rng.uniform(state[axis] + min_move, hi[axis])
        )
    elif motion in ("grow", "shrink"):
        factor = rng.uniform(1.7, 2.0)
        end[2] = np.clip(state[2] * (factor if motion == "grow" else 1 / factor), R_MIN, R_MAX)
    elif motion.startswith("rotate"):
        end[3] += min(rng.uniform(90, 180), MAX_TURN * steps) * (1 if motion == "rotate_cw" else -1)
    else:
        end[4] = 1.0 if motion == "appear" else 0.0
    return end


def _slots(rng: np.random.Generator, num_events: int, num_frames: int) -> list[tuple[int, int]]:
    """One [start, end] frame span per event, in order and disjoint, with still frames around each."""
    edges = np.round(np.linspace(0, num_frames, num_events + 1)).astype(int)
    spans = []
    for begin, stop in zip(edges[:-1], edges[1:]):
        length = int(stop - begin)
        steps = min(length - 1, max(2, round(rng.uniform(0.6, 0.85) * (length - 1))))
        start = int(begin + rng.integers(0, length - steps))
        spans.append((start, start + steps))
    return spans


def _choose(rng: np.random.Generator, options: list) -> object:
    return options[rng.integers(len(options))]


def plan_scene(
    rng: np.random.Generator,
    num_objects: int,
    num_events: int,
    num_frames: int,
    held: set[tuple[str, str, str]],
    val: bool,
    shape_hw: tuple[int, int],
    min_move: float,
    sequential: bool,
) -> dict | None:
    """Objects, initial states and a state-consistent chain of events (None if the chain got stuck).

    ``sequential``: event i is done by object i (short clips). In training no event uses a held-out
    triple; in validation the first event does. An object's start state is drawn when it first acts,
    to fit that action; until then it stands still.
    """
    primary = _choose(rng, sorted(held)) if val else None
    pairs = [primary[:2]] if primary else []
    while len(pairs) < num_objects:
        pairs.append(_choose(rng, [p for p in PAIRS if p not in pairs]))
    states: list[np.ndarray | None] = [None] * num_objects
    initial: list[np.ndarray | None] = [None] * num_objects
    events, ends = [], []
    for index, (start, end) in enumerate(_slots(rng, num_events, num_frames)):
        options = {
            k: [
                m
                for m in MOTIONS
                if _allowed(pairs[k], m, held) and (states[k] is None or _feasible(states[k], m, shape_hw, min_move))
            ]
            for k in ([index] if sequential else range(num_objects))
        }
        options = {k: v for k, v in options.items() if v}
        if index == 0 and primary:
            obj, motion = 0, primary[2]
        elif not options:
            return None
        else:
            obj = _choose(rng, sorted(options))
            motion = _choose(rng, options[obj])
        if states[obj] is None:
            initial[obj] = states[obj] = _initial_state(rng, motion, shape_hw, min_move)
        states[obj] = _end_state(rng, states[obj], motion, shape_hw, min_move, end - start)
        ends.append(states[obj])
        events.append(
            {
                "object": obj,
                "colour": pairs[obj][0],
                "shape": pairs[obj][1],
                "motion": motion,
                "synonym": int(rng.integers(3)),
                "start_frame": start,
                "end_frame": end,
            }
        )
    initial = [s if s is not None else _initial_state(rng, None, shape_hw, min_move) for s in initial]
    return {"objects": pairs, "initial": np.stack(initial), "events": events, "ends": ends}


def _allowed(pair: tuple[str, str], motion: str, held: set[tuple[str, str, str]]) -> bool:
    if (*pair, motion) not in _VALID or (*pair, motion) in held:
        return False
    return not (motion == "vanish" and (*pair, "appear") in held)  # else it could never come back


def scene_tracks(scene: dict, num_frames: int) -> np.ndarray:
    """Per-object states over time [objects, frames, 5], linear between an event's start and end."""
    tracks = np.repeat(scene["initial"][:, None], num_frames, axis=1)
    for event, end_state in zip(scene["events"], scene["ends"]):
        obj, start, end = event["object"], event["start_frame"], event["end_frame"]
        weight = np.linspace(0.0, 1.0, end - start + 1)[:, None]
        tracks[obj, start : end + 1] = tracks[obj, start] + weight * (end_state - tracks[obj, start])
        tracks[obj, end + 1 :] = end_state
    return tracks


def _overlap(tracks: np.ndarray, shape_hw: tuple[int, int]) -> int:
    """Frames where two visible objects touch: plans with fewer are preferred."""
    height, width = shape_hw
    total = 0
    for a, b in combinations(range(len(tracks)), 2):
        dx, dy = (tracks[a, :, 0] - tracks[b, :, 0]) * width, (tracks[a, :, 1] - tracks[b, :, 1]) * height
        near = np.hypot(dx, dy) < 1.15 * (tracks[a, :, 2] + tracks[b, :, 2]) * min(shape_hw)
        total += int(np.sum(near & (tracks[a, :, 4] > 0) & (tracks[b, :, 4] > 0)))
    return total


def best_scene(rng: np.random.Generator, num_frames: int, attempts: int = 8, **kwargs) -> dict:
    """The plan with the least overlap among a few; several events need a pair that can be swapped."""
    best, best_cost = None, np.inf
    for _ in range(attempts):
        scene = plan_scene(rng, num_frames=num_frames, **kwargs)
        if scene is None or (len(scene["events"]) > 1 and swap_events(rng, scene["events"]) is None):
            continue
        cost = _overlap(scene_tracks(scene, num_frames), kwargs["shape_hw"])
        if cost < best_cost:
            best, best_cost = scene, cost
        if cost == 0:
            break
    if best is None:
        raise RuntimeError(f"no consistent scene in {attempts} attempts for {kwargs}")
    return best


def _distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised distance: below 1 inside the shape of radius 1 (v points down, vertices point up)."""
    if shape == "circle":
        return np.hypot(u, v)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) / 0.75
    if shape == "triangle":  # edge normals at -30, 90 and 210 degrees, apothem 0.5 of the circumradius
        normals = np.deg2rad([-30.0, 90.0, 210.0])
        return np.max([u * np.cos(a) + v * np.sin(a) for a in normals], axis=0) / 0.5 / 1.15
    # Star: straight edges from each tip (radius 1) to the next valley (radius 0.45, 36 degrees on).
    half, valley = np.deg2rad(36.0), 0.45
    off_tip = half - np.abs((np.arctan2(v, u) + np.pi / 2) % (2 * half) - half)  # angle to the nearest tip
    edge = (
        valley
        * np.sin(half)
        / (np.cos(off_tip) * valley * np.sin(half) - np.sin(off_tip) * (valley * np.cos(half) - 1))
    )
    return np.hypot(u, v) / edge


def render(tracks: np.ndarray, objects: list[tuple[str, str]], background: np.ndarray, pan: int = 0) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 of the objects' tracks drawn over ``background`` ([H, W, 3] uint8).

    ``pan`` > 0 slides a background wider by ``pan * (T - 1)`` pixels by that much per frame.
    """
    num_frames, height = tracks.shape[1], background.shape[0]
    width = background.shape[1] - pan * (num_frames - 1)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        if t and not pan and np.array_equal(tracks[:, t], tracks[:, t - 1]):  # most frames are still
            out[t] = out[t - 1]
            continue
        out[t] = background[:, pan * t : pan * t + width]
        for (colour, shape), state in zip(objects, tracks[:, t]):
            if state[4] > 0:
                _draw(out[t], shape, np.array(COLOURS[colour], np.float32), state)
    return out


def _draw(frame: np.ndarray, shape: str, colour: np.ndarray, state: np.ndarray) -> None:
    """Blend one antialiased shape into ``frame`` (uint8) in place, computing only its bounding box."""
    height, width = frame.shape[:2]
    x, y, radius, angle, alpha = state
    x, y, pixels = x * width, y * height, max(radius * min(height, width), 1e-3)
    reach = 1.2 * pixels + 2  # the triangle's vertices lie 1.15 radii out
    x0, x1 = max(int(x - reach), 0), min(int(x + reach) + 1, width)
    y0, y1 = max(int(y - reach), 0), min(int(y + reach) + 1, height)
    dx = (np.arange(x0, x1, dtype=np.float32)[None] + 0.5 - x) / pixels
    dy = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - y) / pixels
    cos, sin = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    # Sampling the shape at coordinates rotated by -angle turns it clockwise on screen (y points down).
    distance = _distance(shape, cos * dx + sin * dy, cos * dy - sin * dx)
    cover = np.clip((1 - distance) * pixels + 0.5, 0, 1) * alpha
    region = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.clip(region + cover[..., None] * (colour - region) + 0.5, 0, 255)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted, low-contrast texture (noise, stripes, checker or gradient) so saturated objects stand out."""
    ys, xs = np.mgrid[0:height, 0:width] / min(height, width)  # scales follow the short side
    angle = rng.uniform(0, np.pi)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    kind = rng.integers(4)
    if kind == 0:
        coarse = Image.fromarray((rng.random((6, -(-6 * width // height))) * 255).astype(np.uint8))
        pattern = np.asarray(coarse.resize((width, height), Image.BILINEAR)) / 255.0
    elif kind == 1:
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 8) * along)
    elif kind == 2:
        cell = rng.uniform(0.08, 0.2)
        pattern = ((xs // cell + ys // cell) % 2).astype(float)
    else:
        pattern = (along - along.min()) / np.ptp(along)
    base = rng.uniform(70, 170) + rng.uniform(-15, 15, 3)
    grain = rng.normal(0, 3, (height, width, 1))
    texture = base + rng.uniform(15, 35) * (pattern[..., None] - 0.5) + grain
    return np.clip(texture + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Config:
    out_dir: str
    seed: int
    size: int
    long_size: int
    gop: int | None


def _video_format(rng: np.random.Generator, kind: str, config: _Config) -> tuple[int, int, tuple[int, int]]:
    """(fps, seconds, (height, width)) of one video of ``kind``."""
    if kind == "long":
        return int(rng.choice([1, 2])), int(rng.integers(60, 241)), (config.long_size, config.long_size)
    if kind == "clips":
        return 8, int(rng.integers(3, 5)), (config.size, config.size)
    return 25, int(rng.integers(10, 21)), (336, 596)  # webvid: WebVid's usual 596x336


def _video_item(config: _Config, kind: str, split: str, index: int) -> dict:
    subset = SUBSETS[f"{kind}/{split}"]
    rng = np.random.default_rng([config.seed, subset, index])
    fps, seconds, shape_hw = _video_format(rng, kind, config)
    num_frames = fps * seconds
    if kind == "long":  # at least 6 frames per event, so every motion spans several frames
        num_objects, num_events = int(rng.integers(2, 4)), int(rng.integers(4, min(12, num_frames // 6) + 1))
    else:
        num_objects = num_events = 1 + int(rng.random() < 0.5)
    scene = best_scene(
        rng,
        num_frames,
        num_objects=num_objects,
        num_events=num_events,
        held=heldout(config.seed)[0],
        val=split == "val",
        shape_hw=shape_hw,
        min_move=0.4 if kind == "long" else 0.45,
        sequential=kind != "long",
    )
    # WebVid-like clips pan over their background, so that every frame costs the decoder as in real footage.
    pan = int(kind == "webvid")
    texture = background(rng, shape_hw[0], shape_hw[1] + pan * (num_frames - 1))
    frames = render(scene_tracks(scene, num_frames), scene["objects"], texture, pan)
    videoid, page_dir = f"{subset}{index:07d}", f"{kind}-{split}_{index // 1000:03d}"
    path = Path(config.out_dir) / "videos" / page_dir / f"{videoid}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_video(frames, path, fps=fps, gop=config.gop, options=X264_OPTIONS)
    events, style = scene["events"], (int(rng.integers(len(CHAINS))), bool(rng.random() < 0.3))
    row = {
        "videoid": videoid,
        "contentUrl": f"synthetic://{kind}/{videoid}.mp4",
        "duration": f"PT00H{seconds // 60:02d}M{seconds % 60:02d}S",
        "page_dir": page_dir,
        "name": describe(events, style),
        "split": split,
        "reverse_caption": reverse_caption(events, num_frames, style),
        "motion": events[0]["motion"],
        "shape": events[0]["shape"],
        "colour": events[0]["colour"],
        "num_objects": num_objects,
        "events": json.dumps(events),
        "fps": fps,
        "num_frames": num_frames,
    }
    if kind == "long":
        row["swapped_caption"] = describe(swap_events(rng, events), style)
    return row


def _image_item(config: _Config, kind: str, split: str, index: int) -> dict:
    subset = SUBSETS[f"images/{split}"]
    rng = np.random.default_rng([config.seed, subset, index])
    held_pairs = heldout(config.seed)[1]
    train_pairs = [p for p in PAIRS if p not in held_pairs]
    objects = [_choose(rng, sorted(held_pairs) if split == "val" else train_pairs)]
    if rng.random() < 0.5:
        objects.append(_choose(rng, [p for p in train_pairs if p != objects[0]]))
    shape_hw = (config.size, config.size)
    for _ in range(20):  # redraw placements until the objects do not touch
        states = np.stack([_initial_state(rng, None, shape_hw, 0.0) for _ in objects])[:, None]
        if _overlap(states, shape_hw) == 0:
            break
    frame = render(states, objects, background(rng, *shape_hw))[0]
    image = f"images/{split}_{index // 1000:03d}/{subset}{index:07d}.jpg"
    (Path(config.out_dir) / image).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(Path(config.out_dir) / image, quality=90)
    template = _choose(rng, IMAGE_TEMPLATES[len(objects) - 1])
    caption = template.format(*(f"{_indefinite(colour)} {colour} {shape}" for colour, shape in objects))
    return {
        "image": image,
        "caption": caption,
        "split": split,
        "shape": objects[0][1],
        "colour": objects[0][0],
        "num_objects": len(objects),
    }


def _run_chunk(task: tuple) -> tuple[int, list[dict]]:
    position, config, kind, split, start, stop = task
    item = _image_item if kind == "images" else _video_item
    return position, [item(config, kind, split, index) for index in range(start, stop)]


def make_corpus(
    out_dir: str | Path,
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    num_long: int = 200,
    num_long_val: int = 40,
    num_images: int = 2000,
    num_image_val: int = 128,
    size: int = 96,
    long_size: int = 64,
    workers: int = 2,
    webvid_like: bool = False,
    gop: int | None = None,
    progress: bool = True,
) -> dict:
    """Write the corpus under ``out_dir``; returns counts, CSV paths and seconds taken.

    Clip counts default to 2000 train + 256 val, or 64 + 16 with ``webvid_like``, which writes only
    clips.csv with 596x336, 10-20 s, 25 fps clips (``gop``: keyframe interval) for decoding benchmarks.
    """
    if size % 2 or long_size % 2:
        raise ValueError(f"h264 yuv420p needs even sizes, got size={size} long_size={long_size}")
    began, out = time.perf_counter(), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    defaults = (64, 16) if webvid_like else (2000, 256)
    counts = {
        "clips": {
            "train": defaults[0] if num_train is None else num_train,
            "val": defaults[1] if num_val is None else num_val,
        }
    }
    if not webvid_like:
        counts["long"] = {"train": num_long, "val": num_long_val}
        counts["images"] = {"train": num_images, "val": num_image_val}
    # Small chunks of items per task: workers stay busy and results come back in a fixed order.
    chunk = {"clips": 1 if webvid_like else 16, "long": 4, "images": 32}
    tasks = [
        (kind, split, start, min(start + chunk[kind], total))
        for kind in counts
        for split, total in counts[kind].items()
        for start in range(0, total, chunk[kind])
    ]
    config = _Config(str(out), seed, size, long_size, gop)
    jobs = [
        (i, config, "webvid" if webvid_like else kind, split, first, stop)
        for i, (kind, split, first, stop) in enumerate(tasks)
    ]
    results = _run(jobs, workers, {kind: sum(c.values()) for kind, c in counts.items()}, progress)
    paths = {}
    for kind, columns in (("clips", VIDEO_COLUMNS), ("long", LONG_COLUMNS), ("images", IMAGE_COLUMNS)):
        if kind in counts:
            rows = [row for i, task in enumerate(tasks) if task[0] == kind for row in results[i]]
            paths[kind] = _write_csv(out / f"{kind}.csv", columns, rows)
    classes = {"motion": list(MOTIONS), "shape": list(SHAPES), "colour": list(COLOURS)}
    (out / "classes.json").write_text(json.dumps(classes, indent=1))
    triples, pairs = heldout(seed)
    (out / "heldout.json").write_text(json.dumps({"triples": sorted(triples), "pairs": sorted(pairs)}))
    return {"counts": counts, "csv": paths, "seconds": time.perf_counter() - began}


def _run(jobs: list[tuple], workers: int, totals: dict[str, int], show: bool) -> dict[int, list[dict]]:
    results: dict[int, list[dict]] = {}
    columns = (TextColumn("{task.description:>7}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # spawn, not fork: the caller may hold threads (rich's refresher, torch) that a fork would copy badly.
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        with Progress(*columns, console=Console(stderr=True), disable=not show) as bar:
            bars = {kind: bar.add_task(kind, total=total) for kind, total in totals.items()}
            for position, rows in pool.imap_unordered(_run_chunk, jobs) if pool else map(_run_chunk, jobs):
                results[position] = rows
                bar.advance(bars["clips" if jobs[position][2] == "webvid" else jobs[position][2]], len(rows))
    finally:
        if pool:
            pool.close()
            pool.join()
    return results


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> str:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=None, help="default 2000 (64 with --webvid-like)")
    parser.add_argument("--num-val", type=int, default=None, help="default 256 (16 with --webvid-like)")
    for name, default in (
        ("num-long", 200),
        ("num-long-val", 40),
        ("num-images", 2000),
        ("num-image-val", 128),
        ("size", 96),
        ("long-size", 64),
        ("workers", 2),
    ):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--webvid-like", action="store_true", help="only 596x336 25 fps 10-20 s clips")
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval (default: the encoder's)")
    args = vars(parser.parse_args(argv))
    summary = make_corpus(args.pop("out"), **args)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
