"""ViCLIP weights (OpenGVLab/InternVideo, InternVideo1/Pretrain/ViCLIP) -> vfm's layout.

The released files (``{"model": state_dict}``) use OpenAI CLIP naming under two prefixes:

- ``vision_encoder.``: ``conv1.weight`` is a Conv3d [D, 3, k, p, p] (k = 1: per-frame patches),
  ``class_embedding``, ``positional_embedding`` [1 + N, D], ``temporal_positional_embedding`` [1, T, D]
  (added to the patch tokens only, zero at init), ``ln_pre``, ``transformer.resblocks.{i}.*``, ``ln_post``,
  ``proj``; QuickGELU, CLS pooling.
- ``text_encoder.``: CLIP's causal text transformer (``token_embedding``, ``positional_embedding``,
  ``transformer.resblocks.{i}.*``, ``ln_final``, ``text_projection``), EOT pooling, 32 tokens of context.
- ``temp``: the contrastive temperature.

ViCLIP lays the tokens out patch-major where vfm's `VideoViT` is frame-major; with joint attention over all
tokens and no dropping the two compute the same function, so only names and shapes change.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .convert import ConvertedWeights, count_blocks

VISION = "vision_encoder."
TEXT = "text_encoder."
HEAD_WIDTH = 64  # ViCLIP-B and -L keep CLIP's 64-wide heads; the heads cannot be read from the shapes
# ViCLIP names -> VideoViT names where they differ (the rest is identical: CLIP naming on both sides)
VIDEO_RENAMES = {"temporal_positional_embedding": "temporal_embedding"}


def is_viclip(state: dict[str, torch.Tensor]) -> bool:
    conv = state.get(VISION + "conv1.weight")
    return conv is not None and conv.ndim == 5


def viclip_model_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """open_clip config dict of the CLIP that ViCLIP was made from (read from the tensor shapes)."""
    conv = state[VISION + "conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(state[VISION + "positional_embedding"].shape[0] - 1)
    vocab_size, text_width = state[TEXT + "token_embedding.weight"].shape
    return {
        "embed_dim": state[VISION + "proj"].shape[1],
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": grid * patch,
            "patch_size": patch,
            "width": width,
            "layers": count_blocks(state, VISION + "transformer.resblocks."),
            "head_width": HEAD_WIDTH,
        },
        "text_cfg": {
            "context_length": state[TEXT + "positional_embedding"].shape[0],
            "vocab_size": vocab_size,
            "width": text_width,
            "heads": text_width // HEAD_WIDTH,
            "layers": count_blocks(state, TEXT + "transformer.resblocks."),
        },
    }


def _video_entry(name: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    if name == "conv1.weight":
        if value.shape[2] != 1:
            raise ValueError(
                f"ViCLIP conv1 has a temporal kernel of {value.shape[2]}: vfm's VideoViT embeds frames one by one"
            )
        return name, value[:, :, 0]
    if name == "temporal_positional_embedding":
        return VIDEO_RENAMES[name], value.reshape(value.shape[-2], value.shape[-1])
    return name, value


def convert_viclip(state: dict[str, torch.Tensor]) -> ConvertedWeights:
    """A ViCLIP state dict -> ``video.*`` / ``text.*``; reports what it skipped."""
    if not is_viclip(state):
        raise ValueError(f"not a ViCLIP state dict: no Conv3d {VISION}conv1.weight")
    converted, skipped = {}, {}
    for key, value in state.items():
        if key.startswith(VISION):
            name, tensor = _video_entry(key[len(VISION) :], value)
            converted["video." + name] = tensor
        elif key.startswith(TEXT):
            converted["text." + key[len(TEXT) :]] = value
        elif key == "temp":
            skipped[key] = "contrastive temperature: not part of a tower"
        else:
            skipped[key] = "not part of the ViCLIP vision or text encoder"
    temporal = state.get(VISION + "temporal_positional_embedding")
    video_config = {"num_frames": temporal.shape[-2]} if temporal is not None else {}
    return ConvertedWeights(converted, "viclip", viclip_model_config(state), video_config, skipped)
