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
