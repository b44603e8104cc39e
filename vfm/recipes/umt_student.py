"""What both UMT stages share: the student's architecture, ``init_from``, ``compile`` and the optimiser settings."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from vfm.models import LoadReport, load_weights
from vfm.recipes.base import compile_once
from vfm.recipes.checkpoints import load_init_weights
from vfm.recipes.optim import build_adamw, warmup_cosine

# ViT-B/16 from scratch: tubelet 1 (frames embedded one by one), fixed sin-cos positions, no CLS token,
# mean pooling, no pre-norm, LayerNorm eps 1e-6 (the released students' settings)
STUDENT_DEFAULTS: dict[str, Any] = {
    "image_size": 224,
    "patch_size": 16,
    "width": 768,
    "layers": 12,
    "heads": 12,
    "mlp_ratio": 4.0,
    "num_frames": 8,
    "output_dim": None,
}
STUDENT_FIXED: dict[str, Any] = {
    "cls_token": False,
    "pos_embed": "sincos",
    "pool": "mean",
    "ln_pre": False,
    "norm_eps": 1e-6,
    "attention": "joint",
}


def student_config(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`VideoViT` arguments of the student: B/16 defaults, the given sizes, UMT's fixed choices."""
    overrides = dict(overrides or {})
    clashing = {k: v for k, v in overrides.items() if k in STUDENT_FIXED and v != STUDENT_FIXED[k]}
    if clashing:
        raise ValueError(f"the UMT student fixes {sorted(clashing)} to {[STUDENT_FIXED[k] for k in clashing]}")
    for key in ("drop_path_rate", "drop_ratio"):
        if key in overrides:
            raise ValueError(f"set {key} on the recipe, not in the student's architecture")
    return STUDENT_DEFAULTS | overrides | STUDENT_FIXED


def load_umt_init(module: nn.Module, path: str) -> LoadReport:
    """Loads ``init_from`` into a UMT recipe: every tensor of a vfm checkpoint (any UMT stage) or of a released
    UMT stage-1 / stage-2 file (converted) whose name matches one of the recipe's (``video.*``, ``align.*``...).

    Logs how many tensors each part took, what was left at its init and what of the file this stage has no
    use for (e.g. a stage-2 file's ``text.*`` in stage 1).
    """
    weights = load_init_weights(path)
    children = dict(module.named_children())
    state = {k: v for k, v in weights.state.items() if k.split(".", 1)[0] in children}
    report = load_weights(module, state)
    unused = Counter(k.split(".", 1)[0] for k in weights.state if k not in state)
    rank_zero_info(
        f"init_from {path} ({weights.format}): loaded {dict(Counter(k.split('.', 1)[0] for k in report.loaded))}; "
        f"left at init: {len(report.missing)} {sorted({k.split('.', 1)[0] for k in report.missing})}; "
        f"not used by {type(module).__name__}: {dict(unused)}; not converted: {len(weights.skipped)}"
    )
    return report


def compile_umt(module) -> None:
    """``configure_model`` of both stages with ``compile``: the recipe's blocks and its frozen teacher's, which sits
    outside the module tree (see `vfm.recipes.base.compile_once`)."""
    compile_once(module, *([module.align.teacher.model] if module.align is not None else []))


def scaled_lr(module, lr: float, reference_batch: int | None) -> float:
    """UMT's linear scaling: lr x global batch / reference_batch (as given when reference_batch is None)."""
    trainer = module._trainer
    data = getattr(trainer, "datamodule", None) if trainer is not None else None
    batch = getattr(data, "hparams", {}).get("batch_size") if data is not None else None
    if not reference_batch or batch is None:
        return lr
    global_batch = batch * trainer.world_size * trainer.accumulate_grad_batches
    return lr * global_batch / reference_batch


def configure_adamw_cosine(module) -> dict[str, Any]:
    h = module.hparams
    lr = scaled_lr(module, h.lr, h.lr_reference_batch)
    optimizer = build_adamw(module, lr, h.weight_decay, h.betas)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, h.warmup, h.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
