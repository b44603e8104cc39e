"""Initialising a recipe's towers from another run's Lightning checkpoint (``init_from``).

Distinct from ``--ckpt_path``, which resumes the same run (optimizer, schedule, data state). ``init_from``
copies weights only: e.g. the long-video stage from the 16-frame checkpoint, a fine-tune from any recipe.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from vfm.models import LoadReport, load_weights
from vfm.models.convert import ConvertedWeights
from vfm.models.interchange import convert_state_dict, log_skipped
from vfm.models.pretrained import read_state_dict, unwrap_state_dict

log = logging.getLogger(__name__)


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as a dict (``state_dict``, ``hyper_parameters``...), loaded on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # hparams holding non-tensor objects need the full unpickler
        log.warning("%s is not loadable with weights_only=True (%s); loading it fully", path, error)
        return torch.load(path, map_location="cpu", weights_only=False)


def tower_state_dict(checkpoint: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a checkpoint's state dict under ``prefix`` (e.g. ``video.``), prefix removed."""
    state = checkpoint.get("state_dict", checkpoint)
    tower = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not tower:
        prefixes = sorted({k.split(".", 1)[0] + "." for k in state})
        raise KeyError(f"no weights under {prefix!r} in the checkpoint; it has {prefixes}")
    return tower


def init_towers_from(path: str | Path, towers: dict[str, nn.Module]) -> dict[str, LoadReport]:
    """Loads each ``{prefix: module}`` of ``towers`` (e.g. ``{"video.": self.video}``) from a checkpoint."""
    checkpoint = read_checkpoint(path)
    reports = {}
    for prefix, module in towers.items():
        reports[prefix] = load_weights(module, tower_state_dict(checkpoint, prefix))
        log.info("init_from %s: %s%s", path, prefix, reports[prefix])
    return reports


def is_lightning_checkpoint(checkpoint: object) -> bool:
    return (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("state_dict"), dict)
        and ("pytorch-lightning_version" in checkpoint or "hyper_parameters" in checkpoint)
    )


def lightning_weights(checkpoint: dict) -> ConvertedWeights:
    """A recipe checkpoint as `ConvertedWeights`: its state dict and the architecture its hparams name.

    Recipes whose towers are not an open_clip architecture save ``video_config`` (VideoViT arguments) in
    the checkpoint; the others are rebuilt from ``model`` with their ``num_frames`` and ``pool``.
    """
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    video_config = {key: hparams[key] for key in ("num_frames", "pool") if hparams.get(key) is not None}
    video_config |= hparams.get("video_config") or {}
    video_config |= checkpoint.get("video_config") or {}
    state = checkpoint["state_dict"]
    if "video.temporal_embedding" in state:  # the stored table decides, whatever the hparams say
        video_config["num_frames"] = state["video.temporal_embedding"].shape[0]
    return ConvertedWeights(
        state, "lightning", hparams.get("model"), video_config, classes=checkpoint.get("classes"), hparams=hparams
    )


def load_init_weights(path: str | Path) -> ConvertedWeights:
    """Weights to initialise towers from (``init_from``), in vfm's layout (``video.*``, ``text.*``...).

    Accepts a Lightning checkpoint of any recipe, or an external file: open_clip / OpenAI CLIP, ViCLIP,
    UMT stage 1 or 2 (``.pth``/``.pt``/``.bin``/``.safetensors``, wrapped or not). Skipped tensors are logged.
    """
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        converted = convert_state_dict(read_state_dict(path))
    else:
        checkpoint = read_checkpoint(path)
        if is_lightning_checkpoint(checkpoint):
            return lightning_weights(checkpoint)
        converted = convert_state_dict(unwrap_state_dict(checkpoint, str(path)))
    log_skipped(converted, str(path))
    return converted
