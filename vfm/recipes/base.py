"""Base LightningModule of the video-text recipes: optimizer, schedule, retrieval evaluation, logging."""

from __future__ import annotations

import zlib
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from vfm.models.blocks import compile_blocks
from vfm.recipes.optim import build_adamw, warmup_cosine
from vfm.recipes.retrieval_eval import RetrievalEvaluator


def caption_ids(captions: list[str], device: torch.device) -> torch.Tensor:
    """A stable id per caption text (the same on every rank, unlike Python's salted ``hash``)."""
    return torch.tensor([zlib.crc32(c.encode("utf-8")) for c in captions], dtype=torch.long, device=device)


def compile_once(module: torch.nn.Module, *outside: torch.nn.Module) -> None:
    """``configure_model`` with ``compile``: ``torch.compile`` every transformer block of ``module`` and of the
    ``outside`` modules it uses but does not hold (a frozen teacher kept out of the module tree), once, before
    FSDP wraps them. Reads ``compile_enabled``, ``compile_options`` and ``_compiled`` of ``module``."""
    if not module.compile_enabled or module._compiled:
        return
    for part in (module, *outside):
        compile_blocks(part, **module.compile_options)
    module._compiled = True


class VideoTextRecipe(L.LightningModule):
    """Shared parts of the contrastive recipes. Subclasses define the towers and ``training_step``,
    and ``encode_video`` / ``encode_text`` (embeddings before normalisation) for evaluation."""

    def __init__(
        self,
        lr: float = 4e-4,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup: float = 0.05,
        min_lr_ratio: float = 0.0,
        temporal_eval: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.evaluator = RetrievalEvaluator()
        self.compile_enabled = compile
        self.compile_options: dict = {}  # torch.compile arguments, e.g. {"backend": "aot_eager", "mode": ...}
        self._compiled = False

    # ---- subclasses ------------------------------------------------------------------------------
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def configure_model(self) -> None:
        """With ``compile``: compiles every transformer block (before FSDP wraps them, once)."""
        compile_once(self)

    # ---- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        optimizer = build_adamw(self, h.lr, h.weight_decay, h.betas)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, h.warmup, h.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_progress(self) -> float:
        """Fraction of the planned optimizer steps done (0 when not attached to a trainer)."""
        if self._trainer is None:
            return 0.0
        return self.trainer.global_step / max(1, int(self.trainer.estimated_stepping_batches))

    # ---- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: dict) -> None:
        video = batch["video"]
        reverse = batch.get("reverse_text") if "reverse_text" in batch else batch.get("swapped_text")
        reverse_mask = batch.get("reverse_text_mask") if "reverse_text" in batch else batch.get("swapped_text_mask")
        temporal = self.hparams.temporal_eval and video.shape[1] > 1
        self.evaluator.add(
            batch["caption"],
            video=self.encode_video(video),
            text=self.encode_text(batch["text"], batch["text_mask"]),
            reverse_text=self.encode_text(reverse, reverse_mask) if temporal and reverse is not None else None,
            reversed_video=self.encode_video(video.flip(1)) if temporal else None,
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def _log_eval(self, stage: str) -> None:
        metrics = self.evaluator.compute()
        # Every rank computed the same numbers from the gathered embeddings: no further reduction needed.
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=False, rank_zero_only=False)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {
            "key": batch["key"],
            "video": F.normalize(self.encode_video(batch["video"]).float(), dim=-1).cpu(),
            "text": F.normalize(self.encode_text(batch["text"], batch["text_mask"]).float(), dim=-1).cpu(),
        }
