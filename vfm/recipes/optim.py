"""Optimizer and schedule shared by the recipes: AdamW without decay on norms, biases and embeddings,
linear warmup then cosine decay, both counted in optimizer steps."""

from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weight matrices; undecayed 1-D parameters and names from ``no_weight_decay()``."""
    skip: set[str] = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            skip |= {f"{prefix}.{name}" if prefix else name for name in module.no_weight_decay()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        undecayed = param.ndim < 2 or name in skip or any(name.endswith(f".{s}") for s in skip)
        (no_decay if undecayed else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-6,
) -> torch.optim.AdamW:
    """torch's fused kernel wherever every parameter is on the CPU or a CUDA device. On the CPU torch's default
    is the per-tensor loop; the fused kernel takes a ViT-B step about 5x faster (docs/BENCHMARKS.md, UMT
    stage 1) with the same update (tests/test_umt.py)."""
    groups = parameter_groups(model, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused_supported(groups))


def fused_supported(groups: list[dict]) -> bool:
    """True when every parameter of the groups is on the CPU or a CUDA device (where torch has a fused AdamW)."""
    devices = {p.device.type for group in groups for p in group["params"]}
    return bool(devices) and devices <= {"cpu", "cuda"}


def warmup_cosine(total_steps: int, warmup: float | int, min_lr_ratio: float = 0.0):
    """LR multiplier of a step: linear warmup (``warmup`` steps, or a fraction of all if < 1), then cosine."""
    warmup_steps = int(round(warmup * total_steps)) if 0 < warmup < 1 else int(warmup)
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
