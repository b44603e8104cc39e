"""Lightning callbacks shared by every recipe."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from safetensors.torch import save_file


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


class EmbeddingWriter(BasePredictionWriter):
    """Writes what ``predict`` returns (embeddings with their sample keys) for retrieval indexes.

    One pair of files per rank in ``output_dir`` (default ``<trainer.default_root_dir>/predictions``):
    ``predictions-rank{r}.safetensors`` holds every tensor output (``video``, ``text``, ``probs``...)
    concatenated in sample order, and ``predictions-rank{r}.json`` the sample ``keys`` in that order and the
    tensor shapes. Active in ``predict`` only.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._tensors: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._keys: list[str] = []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, dict):
            raise TypeError(f"predict_step must return a dict of tensors and 'key', got {type(prediction).__name__}")
        self._keys.extend(str(key) for key in prediction.get("key", []))
        for name, value in prediction.items():
            if isinstance(value, torch.Tensor):
                self._tensors[name].append(value.detach().cpu())

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"predictions-rank{trainer.global_rank}"
        tensors = {name: torch.cat(parts).contiguous() for name, parts in self._tensors.items()}
        save_file(tensors, f"{stem}.safetensors")
        index = {"keys": self._keys, "tensors": {name: list(t.shape) for name, t in tensors.items()}}
        Path(f"{stem}.json").write_text(json.dumps(index))
        rank_zero_info(f"wrote {len(self._keys)} predictions per rank to {out}")
        self._tensors, self._keys = defaultdict(list), []
