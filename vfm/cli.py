"""Command line: ``python -m vfm.cli fit|validate|test|predict --config configs/<recipe>.yaml``.

LightningCLI over every recipe (``model.class_path``) and the one datamodule (``data.*``).
Overlays stack: ``--config configs/post_pretrain.yaml --config configs/demo/post_pretrain.yaml``.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI

from vfm.data.datamodule import VideoTextDataModule

TRAINER_DEFAULTS = {
    "default_root_dir": "outputs/runs",
    "logger": [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "outputs/runs"}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "outputs/runs"}},
    ],
    "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.RichProgressBar"},
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {"class_path": "vfm.callbacks.DataHealth"},
    ],
}


class VFMCLI(LightningCLI):
    """LightningCLI with vfm's datamodule fixed and the recipe chosen by ``model.class_path``."""


def main(args: list[str] | None = None, run: bool = True) -> VFMCLI:
    return VFMCLI(
        model_class=L.LightningModule,
        datamodule_class=VideoTextDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
