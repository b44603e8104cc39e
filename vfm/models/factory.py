"""Build the towers from an open_clip model name or config dict, offline.

vfm's tiny test sizes (`vit-tiny-test`, `vit-tiny-test-quickgelu`) are JSON configs in `model_configs/`,
registered with open_clip like its own, so `open_clip.create_model` and `open_clip.get_tokenizer` know them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import open_clip
from torch import nn

from .pretrained import load_open_clip_checkpoint, warn_random_init
from .text import TextEncoder
from .video_vit import VideoViT

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
if "vit-tiny-test" not in open_clip.list_models():
    open_clip.add_model_config(MODEL_CONFIG_DIR)

ModelSpec = str | dict[str, Any]


def list_models() -> list[str]:
    """Every architecture name `create_clip` accepts (open_clip's and vfm's test sizes)."""
    return open_clip.list_models()


def create_clip(model: ModelSpec, pretrained: str | Path | None = None) -> nn.Module:
    """An open_clip CLIP from a registered name, a config dict {embed_dim, vision_cfg, text_cfg, ...}, or
    `local-dir:/folder` (open_clip's own offline layout: open_clip_config.json + weights, loaded from there).

    `pretrained` is a local checkpoint file; without one the model is random (with a warning).
    """
    if isinstance(model, dict):
        clip = open_clip.CLIP(**copy.deepcopy(model))
        name = "config dict"
    elif model.startswith("local-dir:"):
        # open_clip reads open_clip_config.json and the weights file from the folder, offline
        return open_clip.create_model(model, pretrained_image=False, pretrained_text=False)
    else:
        if model.replace("/", "-") not in open_clip.list_models():
            raise ValueError(
                f"unknown model {model!r} (nothing is downloaded: use a registered name or "
                f"'local-dir:/folder' with open_clip_config.json); known: {', '.join(list_models())}"
            )
        # pretrained=None and no base-tower flags: open_clip builds the architecture only, no download
        clip = open_clip.create_model(model, pretrained=None, pretrained_image=False, pretrained_text=False)
        name = model
    if pretrained is None:
        warn_random_init(name)
    else:
        load_open_clip_checkpoint(clip, pretrained)
    return clip


def create_video_vit(
    model: ModelSpec, pretrained: str | Path | None = None, num_frames: int = 8, **video_kwargs
) -> VideoViT:
    """The video tower of a CLIP: its image ViT turned into a `VideoViT` (kwargs as in `VideoViT`)."""
    clip = create_clip(model, pretrained)
    return VideoViT.from_open_clip(clip.visual, num_frames=num_frames, **video_kwargs)


def create_towers(
    model: ModelSpec, pretrained: str | Path | None = None, num_frames: int = 8, **video_kwargs
) -> tuple[VideoViT, TextEncoder]:
    """Video and text towers of one CLIP (loaded once): `(VideoViT, TextEncoder)`."""
    clip = create_clip(model, pretrained)
    video = VideoViT.from_open_clip(clip.visual, num_frames=num_frames, **video_kwargs)
    return video, TextEncoder.from_open_clip(clip)


def get_tokenizer(model: ModelSpec):
    """open_clip's tokenizer for a model name (bundled BPE, offline), or CLIP's for a config dict."""
    if isinstance(model, dict):
        context_length = model.get("text_cfg", {}).get("context_length", 77)
        return open_clip.SimpleTokenizer(context_length=context_length)
    return open_clip.get_tokenizer(model)
