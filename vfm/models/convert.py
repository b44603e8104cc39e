"""What a weight converter returns, shared by the converters of external formats (`convert_*.py`).

Every converter maps a foreign state dict into vfm's own layout, the one every recipe checkpoint uses:
``video.<VideoViT name>`` and ``text.<TextEncoder name>``. It also says which architecture the weights
need (an open_clip config for CLIP-like towers, `VideoViT` keyword arguments for the rest) and which source
tensors it did not use, with the reason, as timm's ``checkpoint_filter_fn`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ConvertedWeights:
    """A state dict in vfm's layout plus what is needed to build the towers it fits.

    Attributes:
        state: ``video.*`` / ``text.*`` (and other ``<tower>.*``) tensors.
        format: the source format (``lightning``, ``open_clip``, ``viclip``, ``umt``).
        model: open_clip architecture name or config dict of CLIP-like towers, when known.
        video_config: `VideoViT` keyword arguments that override (or, without `model`, define) the video tower.
        skipped: source key -> why it was not converted.
        classes: class names of a classification head, when the source has one.
        hparams: the hyper-parameters of a recipe checkpoint (empty for external files).
    """

    state: dict[str, torch.Tensor]
    format: str
    model: str | dict[str, Any] | None = None
    video_config: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    classes: list[str] | None = None
    hparams: dict[str, Any] = field(default_factory=dict)

    def prefixes(self) -> list[str]:
        """Top-level prefixes present, e.g. ``['text.', 'video.']``."""
        return sorted({key.split(".", 1)[0] + "." for key in self.state})


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of ``{prefix}{i}.`` blocks in a state dict (0 when there are none)."""
    indices = {int(key[len(prefix) :].split(".", 1)[0]) for key in state if key.startswith(prefix)}
    return max(indices) + 1 if indices else 0
