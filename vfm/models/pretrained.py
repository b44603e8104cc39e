"""Offline weight loading: local checkpoint files only, never a download.

`read_state_dict` accepts `.safetensors`, `.bin`, `.pt`, `.pth` files holding a plain state dict or one
wrapped as {"state_dict": ...} or {"model": ...} (with or without a DDP `module.` prefix). `load_weights`
loads by name, reports what it skipped and raises when nothing matches, the failure mode of research code
whose non-strict load of a wrapped file silently loads nothing.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from open_clip.transformer import LayerScale as OpenClipLayerScale
from open_clip.transformer import QuickGELU as OpenClipQuickGELU
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_WRAPPER_KEYS = ("state_dict", "model", "module")
# OpenAI CLIP state dicts carry these non-weight entries
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class LoadReport:
    """What a `load_weights` call did: names loaded, left at their init (missing), and ignored."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local checkpoint file into a flat {name: tensor} dict (wrappers and `module.` removed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path} (expected one of {CHECKPOINT_SUFFIXES})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return unwrap_state_dict(state, str(path))


def unwrap_state_dict(state: object, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A loaded checkpoint -> flat {name: tensor}, wrappers ({"state_dict": ...} etc.) and `module.` removed."""
    while isinstance(state, dict) and len(state) and any(k in state for k in _WRAPPER_KEYS):
        wrapper = next(k for k in _WRAPPER_KEYS if k in state)
        if not isinstance(state[wrapper], dict):
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{name} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_weights(
    model: nn.Module, source: str | Path | dict[str, torch.Tensor], prefix: str = "", strict: bool = False
) -> LoadReport:
    """Load a checkpoint file (or state dict) into `model` by name; `prefix` selects and strips a sub-tree.

    Raises when no tensor matches or shapes disagree; logs missing and unexpected keys otherwise (raises on
    them too with `strict`).
    """
    state = read_state_dict(source) if not isinstance(source, dict) else dict(source)
    name = str(source) if not isinstance(source, dict) else "state dict"
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    expected = model.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if mismatched:
        raise ValueError(f"shape mismatch loading {name}: {_preview(mismatched)}")
    report = LoadReport(loaded=[k for k in state if k in expected])
    if not report.loaded:
        raise RuntimeError(
            f"no tensor of {name} (prefix {prefix!r}) matches {type(model).__name__}: "
            f"file has [{_preview(sorted(state))}]; model expects [{_preview(sorted(expected))}]"
        )
    result = model.load_state_dict(state, strict=False)
    report.missing, report.unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if report.missing:
        logger.warning(
            "%s: %d weights not in %s, left at init: %s",
            type(model).__name__,
            len(report.missing),
            name,
            _preview(report.missing),
        )
    if report.unexpected:
        logger.warning(
            "%s: ignored %d tensors of %s: %s",
            type(model).__name__,
            len(report.unexpected),
            name,
            _preview(report.unexpected),
        )
    if strict and (report.missing or report.unexpected):
        raise RuntimeError(f"strict load of {name} failed: missing {report.missing}, unexpected {report.unexpected}")
    logger.info("loaded %d tensors from %s into %s", len(report.loaded), name, type(model).__name__)
    return report


def load_open_clip_checkpoint(clip: nn.Module, path: str | Path) -> LoadReport:
    """Load an open_clip (or OpenAI CLIP state dict) checkpoint file into an open_clip `CLIP` model."""
    state = read_state_dict(path)
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    logit_scale = getattr(clip, "logit_scale", None)
    if "logit_scale" in state and logit_scale is not None:
        state["logit_scale"] = state["logit_scale"].reshape(logit_scale.shape)
    # open_clip's own helpers resample position embeddings when the config's image / context size differs
    resize_pos_embed(state, clip)
    resize_text_pos_embed(state, clip)
    report = load_weights(clip, state)
    logger.info("open_clip weights from %s", path)
    return report


def warn_random_init(model_name: str) -> None:
    """Say loudly that towers are random and how to load weights (they are never downloaded)."""
    warnings.warn(
        f"no pretrained file given for {model_name!r}: the video and text towers are randomly initialised. "
        "Pass pretrained='/path/to/open_clip_pytorch_model.bin' (a local open_clip checkpoint, "
        ".bin/.pt/.pth/.safetensors); nothing is downloaded.",
        UserWarning,
        stacklevel=3,
    )


def video_vit_kwargs_from_open_clip(visual: nn.Module) -> dict:
    """`VideoViT` constructor arguments that reproduce an open_clip ViT image tower."""
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"only open_clip ViT image towers can become video towers, got {type(visual).__name__}")
    blocks = visual.transformer.resblocks
    if visual.attn_pool is not None or not isinstance(blocks[0], ResidualAttentionBlock):
        raise ValueError("attentional pooling and custom blocks (qk_norm, scaled cosine, ...) are not supported")
    activation = blocks[0].mlp.gelu
    quick_gelu = isinstance(activation, OpenClipQuickGELU)
    if not quick_gelu and not (isinstance(activation, nn.GELU) and activation.approximate == "none"):
        raise ValueError(f"unsupported MLP activation {activation}")
    if visual.patch_size[0] != visual.patch_size[1]:
        raise ValueError(f"square patches only, got {visual.patch_size}")
    width = visual.conv1.out_channels
    layer_scale = blocks[0].ls_1
    return {
        "image_size": tuple(visual.image_size),
        "patch_size": visual.patch_size[0],
        "width": width,
        "layers": len(blocks),
        "heads": blocks[0].attn.num_heads,
        "mlp_ratio": blocks[0].mlp.c_fc.out_features / width,
        "output_dim": visual.proj.shape[1] if visual.proj is not None else None,
        "ls_init_value": float(layer_scale.gamma[0].detach()) if isinstance(layer_scale, OpenClipLayerScale) else None,
        "quick_gelu": quick_gelu,
        "norm_eps": visual.ln_post.eps,
        "ln_pre": not isinstance(visual.ln_pre, nn.Identity),
        "pool": {"tok": "cls", "avg": "mean"}[visual.pool_type],
        "final_ln_after_pool": visual.final_ln_after_pool,
    }
