"""Layer-wise learning-rate decay for fine-tuning a ViT (BEiT / MAE / UMT fine-tuning recipes).

Block ``i`` of an ``L``-block encoder trains at ``lr * decay ** (L - i)``; the embeddings (layer 0) at
``decay ** (L + 1)``; the final norm, projection and the new head at the full rate. Lower layers hold the
most general features, so they move least.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from vfm.recipes.optim import fused_supported, parameter_groups


def vit_layer_id(name: str, num_layers: int, prefix: str = "video.") -> int:
    """Depth of a parameter of a VideoViT under ``prefix``: 0 embeddings, i + 1 block i, L + 1 the rest."""
    if not name.startswith(prefix):
        return num_layers + 1  # heads and anything outside the encoder
    name = name[len(prefix) :]
    if name.startswith("transformer.resblocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith(("conv1", "class_embedding", "positional_embedding", "temporal_embedding", "ln_pre")):
        return 0
    return num_layers + 1


def layer_decay_groups(
    model: nn.Module, weight_decay: float, decay: float, num_layers: int, layer_of: Callable[[str], int]
) -> list[dict]:
    """`parameter_groups` (decay / no decay) split by depth, each group with its ``lr_scale``."""
    names = {id(param): name for name, param in model.named_parameters()}
    groups = []
    for group in parameter_groups(model, weight_decay):
        by_layer: dict[int, list[torch.nn.Parameter]] = defaultdict(list)
        for param in group["params"]:
            by_layer[layer_of(names[id(param)])].append(param)
        for layer, params in sorted(by_layer.items()):
            scale = decay ** (num_layers + 1 - layer)
            groups.append({"params": params, "weight_decay": group["weight_decay"], "lr_scale": scale})
    return groups


def build_adamw_layer_decay(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    decay: float,
    num_layers: int,
    layer_of: Callable[[str], int],
) -> torch.optim.AdamW:
    """AdamW whose groups start at ``lr * lr_scale`` (the schedule multiplies each group's own initial lr)."""
    groups = layer_decay_groups(model, weight_decay, decay, num_layers, layer_of)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=1e-6, fused=fused_supported(groups))
