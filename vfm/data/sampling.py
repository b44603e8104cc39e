"""Frame index sampling: which T frames of a video a clip is made of."""

from __future__ import annotations

from typing import Literal

import numpy as np

SamplingMode = Literal["rand", "middle", "fps"]


def sample_indices(
    num_frames: int,
    num_samples: int,
    mode: SamplingMode,
    rng: np.random.Generator | None = None,
    video_fps: float | None = None,
    target_fps: float = 1.0,
) -> list[int]:
    """Indices (sorted, possibly repeated) of ``num_samples`` frames out of ``num_frames``.

    - ``rand``: a random frame in each of ``num_samples`` equal segments (training, as in TSN).
    - ``middle``: the middle frame of each segment (evaluation; deterministic).
    - ``fps``: frames at ``target_fps`` (needs ``video_fps``): a window of ``num_samples`` frames at that
      rate, at a random start when ``rng`` is given, else centred. A video too short for the window
      is covered uniformly instead (frames repeat), so every clip has exactly ``num_samples`` frames.
    Videos shorter than ``num_samples`` frames repeat frames.
    """
    if num_frames < 1 or num_samples < 1:
        raise ValueError(f"need at least one frame, got num_frames={num_frames}, num_samples={num_samples}")
    if mode == "fps":
        if not video_fps or video_fps <= 0:
            raise ValueError("fps sampling needs the video's frame rate")
        step = video_fps / target_fps
        span = (num_samples - 1) * step
        if span < num_frames:
            slack = num_frames - 1 - span
            start = rng.uniform(0, slack) if rng is not None else slack / 2
            return [min(num_frames - 1, int(round(start + k * step))) for k in range(num_samples)]
        mode = "rand" if rng is not None else "middle"
    edges = np.linspace(0, num_frames, num_samples + 1)
    if mode == "rand":
        if rng is None:
            raise ValueError("rand sampling needs a random generator")
        offsets = rng.random(num_samples)
    elif mode == "middle":
        offsets = np.full(num_samples, 0.5)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}: use 'rand', 'middle' or 'fps'")
    positions = edges[:-1] + offsets * (edges[1:] - edges[:-1])
    return np.minimum(np.floor(positions).astype(np.int64), num_frames - 1).tolist()
