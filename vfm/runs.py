"""Run settings the command line resolves before the Trainer exists: the precision ``null`` stands for, and
which earlier run ``--ckpt_path last`` continues."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def resolve_precision(precision: str | int | None, accelerator: object = "auto") -> str | int:
    """``None`` -> ``bf16-mixed`` on a GPU with bf16, ``16-mixed`` on an older GPU, ``32-true`` on the CPU.

    Any explicit setting is kept. fp32 matmuls on a GPU are allowed to use TF32 (``high``) either way.
    """
    on_gpu = str(accelerator or "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        torch.set_float32_matmul_precision("high")
    if precision is not None:
        return precision
    if not on_gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def last_checkpoint_version(root: str | Path, name: str = "lightning_logs") -> int | None:
    """The logger version under ``root/name`` whose ``checkpoints/last*.ckpt`` was written last, if any."""
    newest: tuple[float, int] | None = None
    for path in Path(root, name).glob("version_*/checkpoints/last*.ckpt"):
        match = re.fullmatch(r"version_(\d+)", path.parent.parent.name)
        if match and re.fullmatch(r"last(-v?\d+)?\.ckpt", path.name):
            stamp = (path.stat().st_mtime, int(match.group(1)))
            newest = max(newest, stamp) if newest else stamp
    return newest[1] if newest else None
