"""Clip transforms on uint8 frames [T, C, H, W]: one crop for all frames of a clip.

Frames stay uint8 through the data workers (4x less to move between processes and to the device);
normalisation happens on the device after transfer (:func:`normalize`).
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def random_resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area at an aspect in ``ratio``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(*scale, generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    side = min(height, width)  # fall back to a centre square, as torchvision does
    return (height - side) // 2, (width - side) // 2, side, side


def train_transform(
    frames: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    flip: float = 0.0,
) -> torch.Tensor:
    """Random resized crop (the same box for every frame) to ``size`` x ``size``, optional flip.

    ``flip`` is off by default: a mirrored clip no longer matches a caption that says "left" or "right".
    """
    top, left, h, w = random_resized_crop_box(frames.shape[-2], frames.shape[-1], generator, scale)
    frames = F.resized_crop(frames, top, left, h, w, [size, size], antialias=True)
    if flip > 0 and torch.rand(1, generator=generator).item() < flip:
        frames = frames.flip(-1)
    return frames


def eval_transform(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` (a no-op when the decoder already did), then centre crop."""
    if min(frames.shape[-2:]) != size:
        frames = F.resize(frames, [size], antialias=True)
    return F.center_crop(frames, [size, size])


def normalize(
    video: torch.Tensor,
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
    std: tuple[float, ...] = OPENAI_CLIP_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 [..., C, H, W] in 0-255 to ``dtype`` normalised by channel ``mean``/``std`` (given in 0-1)."""
    shape = (-1, 1, 1)
    mean_t = torch.tensor(mean, device=video.device, dtype=dtype).view(shape) * 255
    std_t = torch.tensor(std, device=video.device, dtype=dtype).view(shape) * 255
    return (video.to(dtype) - mean_t) / std_t


def eval_views(frames: torch.Tensor, size: int, clips: int = 1, crops: int = 1) -> torch.Tensor:
    """Multi-view test input: [clips * crops, T, C, size, size] from ``frames`` [clips * T, C, H, W].

    ``frames`` interleaves the clips (frame j of clip k at ``j * clips + k``: every clip spans the whole video
    at its own phase, TSN-style). Each clip is resized to short side ``size`` and cut into ``crops`` squares
    spread along the long side (the usual 3-crop test; on square frames the crops coincide).
    """
    if frames.shape[0] % clips:  # an image (one frame): every clip is that frame
        frames = frames.repeat_interleave(clips, 0)
    if min(frames.shape[-2:]) != size:
        frames = F.resize(frames, [size], antialias=True)
    height, width = frames.shape[-2:]
    views = []
    for clip in range(clips):
        clip_frames = frames[clip::clips]
        for crop in range(crops):
            fraction = crop / (crops - 1) if crops > 1 else 0.5
            top, left = round((height - size) * fraction), round((width - size) * fraction)
            views.append(F.crop(clip_frames, top, left, size, size))
    return torch.stack(views)
