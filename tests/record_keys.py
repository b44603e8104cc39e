"""A callback for distributed tests: writes the sample keys each rank trained on to ``keys-rank{r}.json``."""

import json
from pathlib import Path

import lightning as L


class RecordKeys(L.Callback):
    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys.extend(str(key) for key in batch["key"])

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(self.output_dir) / f"keys-rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"keys": self.keys, "world_size": trainer.world_size, "step": trainer.global_step}))
