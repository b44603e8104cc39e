"""open_clip / OpenAI CLIP weights -> vfm's layout (``video.*`` from ``visual.*``, ``text.*`` from the text tower).

vfm's towers keep open_clip's parameter names, so the conversion is a change of prefix. The architecture is
read from the tensor shapes (CLIP's head width of 64); OpenAI files (they carry ``input_resolution``) were
trained with QuickGELU. Pass an explicit open_clip model name where the shapes are not enough.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .convert import ConvertedWeights, count_blocks

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
HEAD_WIDTH = 64  # every OpenAI / open_clip ViT uses 64-wide attention heads


def is_open_clip(state: dict[str, torch.Tensor]) -> bool:
    return "visual.conv1.weight" in state and "visual.class_embedding" in state


def open_clip_model_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """An open_clip config dict {embed_dim, quick_gelu, vision_cfg, text_cfg} read from the tensor shapes."""
    conv = state["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    vision_layers = count_blocks(state, "visual.transformer.resblocks.")
    hidden = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    config: dict[str, Any] = {
        "embed_dim": state["visual.proj"].shape[1],
        "quick_gelu": any(key in state for key in OPENAI_EXTRA_KEYS),
        "vision_cfg": {
            "image_size": grid * patch,
            "patch_size": patch,
            "width": width,
            "layers": vision_layers,
            "head_width": HEAD_WIDTH,
            "mlp_ratio": hidden / width,
        },
    }
    if "token_embedding.weight" in state:
        vocab_size, text_width = state["token_embedding.weight"].shape
        config["text_cfg"] = {
            "context_length": state["positional_embedding"].shape[0],
            "vocab_size": vocab_size,
            "width": text_width,
            "heads": text_width // HEAD_WIDTH,
            "layers": count_blocks(state, "transformer.resblocks."),
            "mlp_ratio": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        }
    return config


def convert_open_clip(state: dict[str, torch.Tensor], model: str | dict | None = None) -> ConvertedWeights:
    """``visual.*`` -> ``video.*``; the flat CLIP text tower -> ``text.*``; temperatures and metadata skipped."""
    converted, skipped = {}, {}
    for key, value in state.items():
        if key.startswith("visual."):
            converted["video." + key[len("visual.") :]] = value
        elif key.startswith(TEXT_KEYS):
            converted["text." + key] = value
        elif key in OPENAI_EXTRA_KEYS:
            skipped[key] = "OpenAI metadata, not a weight"
        elif key.startswith(("logit_scale", "logit_bias")):
            skipped[key] = "contrastive temperature: not part of a tower"
        else:
            skipped[key] = "not a CLIP ViT / text transformer weight (HF text towers are unsupported)"
    return ConvertedWeights(converted, "open_clip", model or open_clip_model_config(state), skipped=skipped)
