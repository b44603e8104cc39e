"""Weight interchange without Lightning: external formats in, self-describing encoder folders out.

- `convert_state_dict`: any supported state dict (vfm layout, open_clip / OpenAI CLIP, ViCLIP, UMT) ->
  `ConvertedWeights` in vfm's layout (``video.*``, ``text.*``), through one converter per format.
- `video_vit_config` / `video_config_from_model` / `text_config_from_model`: the constructor arguments
  that rebuild a tower, read from a built tower or from an open_clip architecture.
- `save_encoder` / `load_encoder`: a folder with ``config.json`` and one ``<tower>.safetensors`` per tower
  (``video``, ``text``, ``head``), rebuilt by plain PyTorch + open_clip.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import _build_text_tower, _build_vision_tower
from safetensors.torch import load_file, save_file
from torch import nn

from .convert import ConvertedWeights
from .convert_open_clip import convert_open_clip, is_open_clip
from .convert_umt import convert_umt, is_umt
from .convert_viclip import convert_viclip, is_viclip
from .heads import head_features
from .layers import LayerScale, QuickGELU
from .pretrained import load_weights
from .text import TextEncoder
from .video_vit import VideoViT

log = logging.getLogger(__name__)

FORMAT = "vfm-encoder"
CONFIG_NAME = "config.json"
VIDEO_ARCHITECTURE_KEYS = ("image_size", "patch_size", "width", "layers", "heads")


# ---------------------------------------------------------------------------------------------- converting
def convert_state_dict(state: dict[str, torch.Tensor]) -> ConvertedWeights:
    """Recognise the layout of a (wrapper-free) state dict and convert it to vfm's."""
    if is_viclip(state):
        return convert_viclip(state)
    if is_umt(state):
        return convert_umt(state)
    if is_open_clip(state):
        return convert_open_clip(state)
    if any(key.startswith("video.") for key in state):
        return ConvertedWeights(dict(state), "vfm")
    heads = sorted({key.split(".", 1)[0] for key in state})[:12]
    raise ValueError(
        "unrecognised weights: expected a vfm checkpoint (video.*), open_clip / OpenAI CLIP (visual.*), "
        f"ViCLIP (vision_encoder.* with a Conv3d) or UMT (encoder.* / vision_encoder.patch_embed.*); found {heads}"
    )


def log_skipped(converted: ConvertedWeights, source: str) -> None:
    if converted.skipped:
        preview = ", ".join(f"{key} ({why})" for key, why in list(converted.skipped.items())[:6])
        log.warning("%s (%s): %d tensors not converted: %s", source, converted.format, len(converted.skipped), preview)


# ---------------------------------------------------------------------------------------------- configs
def _model_config(model: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(model, dict):
        return copy.deepcopy(model)
    config = open_clip.get_model_config(model.replace("/", "-"))
    if config is None:
        raise ValueError(f"unknown open_clip model {model!r}; known: {', '.join(open_clip.list_models())}")
    return config


def video_config_from_model(model: str | dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """`VideoViT` arguments of the image tower of an open_clip architecture (plus `overrides`)."""
    from .pretrained import video_vit_kwargs_from_open_clip

    config = _model_config(model)
    visual = _build_vision_tower(config["embed_dim"], config["vision_cfg"], config.get("quick_gelu", False))
    return video_vit_kwargs_from_open_clip(visual) | overrides


def text_config_from_model(model: str | dict[str, Any]) -> dict[str, Any] | None:
    """What `build_text_encoder` needs: {embed_dim, quick_gelu, text_cfg} (None without a text tower)."""
    config = _model_config(model)
    if "text_cfg" not in config:
        return None
    return {key: config[key] for key in ("embed_dim", "quick_gelu", "text_cfg") if key in config}


def video_vit_config(model: VideoViT) -> dict[str, Any]:
    """Constructor arguments that rebuild `model` (for inference: no drop path, no token dropping)."""
    block = model.blocks[0]
    layer_scale = block.ls_1
    return {
        "image_size": list(model.image_size),
        "patch_size": model.patch_size,
        "width": model.width,
        "layers": len(model.blocks),
        "heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.c_fc.out_features / model.width,
        "output_dim": model.output_dim,
        "num_frames": model.num_frames,
        "ls_init_value": float(layer_scale.gamma[0]) if isinstance(layer_scale, LayerScale) else None,
        "quick_gelu": isinstance(block.mlp.gelu, QuickGELU),
        "norm_eps": model.ln_post.eps,
        "ln_pre": not isinstance(model.ln_pre, nn.Identity),
        "cls_token": model.class_embedding is not None,
        "pos_embed": model.pos_embed_type,
        "pool": model.pool,
        "final_ln_after_pool": model.final_ln_after_pool,
        "attention": model.attention,
        "cls_key_bias": model.cls_key_bias,
        "in_chans": model.conv1.in_channels,
    }


def is_complete_video_config(config: dict[str, Any] | None) -> bool:
    return bool(config) and all(key in config for key in VIDEO_ARCHITECTURE_KEYS)


def resolve_video_config(
    weights: ConvertedWeights | None, model: str | dict | None, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """VideoViT arguments: the architecture of `model` or of the init weights, then `overrides`."""
    overrides = dict(overrides or {})
    if is_complete_video_config(overrides):
        return overrides
    model = model or (weights.model if weights is not None else None)
    config = video_config_from_model(model) if model is not None else {}
    config |= weights.video_config if weights is not None else {}
    config |= overrides
    if not is_complete_video_config(config):
        raise ValueError(
            "cannot tell the video architecture: give init_from (a recipe checkpoint or weights file), "
            "model (an open_clip name) or a complete video_config"
        )
    return config


def build_text_encoder(text_config: dict[str, Any]) -> TextEncoder:
    tower = _build_text_tower(
        text_config["embed_dim"], copy.deepcopy(text_config["text_cfg"]), text_config.get("quick_gelu", False)
    )
    return TextEncoder.from_open_clip(tower)


# ---------------------------------------------------------------------------------------------- encoder folders
class Encoders(nn.Module):
    """Towers rebuilt from an exported folder: ``video`` (always), ``text`` and ``head`` where exported."""

    def __init__(
        self, video: VideoViT, text: TextEncoder | None, head: nn.Linear | None, config: dict[str, Any]
    ) -> None:
        super().__init__()
        self.video, self.text, self.head, self.config = video, text, head, config

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Normalised frames [B, T, C, H, W] -> video embedding [B, output_dim]."""
        embedding = self.video(video)
        return F.normalize(embedding, dim=-1) if normalize else embedding

    @torch.no_grad()
    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if self.text is None:
            raise ValueError("this export has no text tower")
        embedding = self.text(text).embedding
        return F.normalize(embedding, dim=-1) if normalize else embedding

    @torch.no_grad()
    def classify(self, video: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] from the exported classification head."""
        if self.head is None:
            raise ValueError("this export has no classification head")
        head = self.config["head"]
        grid = tuple(head.get("grid_size", (4, 2)))
        return self.head(head_features(self.video, video, head.get("features", "pre_logits"), grid))

    def tokenizer(self):
        """open_clip's bundled tokenizer the towers were trained with (offline)."""
        spec = self.config.get("tokenizer") or {"name": "ViT-B-16", "context_length": 77}
        return open_clip.get_tokenizer(spec["name"], context_length=spec["context_length"])


def save_encoder(out_dir: str | Path, towers: dict[str, nn.Module], config: dict[str, Any]) -> Path:
    """Writes ``<name>.safetensors`` per tower and ``config.json`` (configs of the towers, class names...)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, module in towers.items():
        # contiguous clones: safetensors refuses shared or strided storage (tied embeddings, views)
        state = {key: value.detach().contiguous().clone() for key, value in module.state_dict().items()}
        save_file(state, str(out / f"{name}.safetensors"), metadata={"format": FORMAT})
    payload = {"format": FORMAT, "version": 1, "towers": sorted(towers), **config}
    tmp = out / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out / CONFIG_NAME)
    return out


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Encoders:
    """Rebuild the towers of an exported folder (``python -m vfm.export``) in eval mode; strict loading."""
    folder = Path(path)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: export a checkpoint with `python -m vfm.export CKPT DIR`")
    config = json.loads(config_file.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_file} is not a vfm encoder export (format {config.get('format')!r})")
    video = VideoViT(**config["video"])
    text = build_text_encoder(config["text"]) if "text" in config.get("towers", []) else None
    head = None
    if "head" in config.get("towers", []):
        head = nn.Linear(config["head"]["in_features"], config["head"]["num_classes"])
    encoders = Encoders(video, text, head, config)
    for name in config["towers"]:
        load_weights(getattr(encoders, name), load_file(str(folder / f"{name}.safetensors")), strict=True)
    return encoders.to(device).eval()
