"""Lightning callbacks shared by every recipe."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class DataHealth(L.Callback):
    """Logs ``data/skipped_samples``: training samples the data workers had to skip (decode errors etc.)."""

    def __init__(self) -> None:
        self.skipped = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, dict) and isinstance(batch.get("num_failed"), torch.Tensor):
            self.skipped += int(batch["num_failed"])
            pl_module.log("data/skipped_samples", float(self.skipped), on_step=True, on_epoch=False, reduce_fx="sum")

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
