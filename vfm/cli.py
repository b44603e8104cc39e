"""Command line: ``python -m vfm.cli fit|validate|test|predict --config configs/<recipe>.yaml``.

LightningCLI over every recipe (``model.class_path``) and the one datamodule (``data.*``).
Overlays stack: ``--config configs/post_pretrain.yaml --config configs/demo/post_pretrain.yaml``.
"""

from __future__ import annotations

import copy
import sys

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins import Precision
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from vfm.callbacks import DataHealth, EmbeddingWriter
from vfm.data.datamodule import VideoTextDataModule
from vfm.fault_tolerance import AtomicCheckpointIO, NonFiniteLossGuard, PreemptionCheckpoint
from vfm.runs import last_checkpoint_version, resolve_precision
from vfm.throughput import Throughput


class VFMCLI(LightningCLI):
    """LightningCLI with vfm's datamodule fixed and the recipe chosen by ``model.class_path``.

    Every run has step-wise learning-rate logging, checkpoints (``last.ckpt`` always) and data-health
    logging, configured under ``lr_monitor``, ``checkpoint`` and ``data_health``; ``predict`` writes the
    embeddings and sample keys under ``prediction_writer.output_dir``; and a rich progress bar
    unless ``trainer.enable_progress_bar`` is false or another progress bar is configured.

    For long runs: throughput and MFU logging (``throughput``), ``last.ckpt`` written on SIGTERM / SIGUSR1
    (``preemption``), non-finite losses skipped and the run stopped after ``nonfinite.max_consecutive`` in a row,
    checkpoint files replaced atomically, ``trainer.precision: null`` resolved to bf16-mixed on a GPU that
    has it (16-mixed on older GPUs, 32-true on the CPU), and ``--ckpt_path last`` finding the newest
    ``last.ckpt`` of earlier runs under ``default_root_dir`` and logging on into that run's version folder.

    With ``--ckpt_path FILE`` the recipe is rebuilt from the checkpoint's hyper-parameters, which take precedence
    over the config files; recipe arguments given one by one on the command line (``--model.rerank_k 16``,
    ``--model.init_from null``) are applied over them again, and logged.
    """

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        command_line = sys.argv[1:] if args is None else args if isinstance(args, (list, tuple)) else []
        self._model_arguments = explicit_model_arguments(command_line)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand or not self._model_arguments:
            return super()._parse_ckpt_path()
        before = self.config[subcommand].model.init_args
        given = {key: copy.deepcopy(before[key]) for key in self._model_arguments if key in before}
        super()._parse_ckpt_path()  # Lightning: the checkpoint's hyper-parameters over everything
        after = self.config[subcommand].model.init_args
        unknown = sorted(key for key in given if key not in after)
        if unknown:
            raise ValueError(f"--model.{unknown[0]}: not an argument of the checkpoint's recipe ({unknown})")
        changed = {key: value for key, value in given.items() if after[key] != value}
        for key, value in changed.items():
            after[key] = value
        if changed:
            rank_zero_info(f"--ckpt_path: command-line arguments over the checkpoint's hyper-parameters: {changed}")

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(DataHealth, "data_health")
        # predict writes embeddings + sample keys (prediction_writer.output_dir, default <root>/predictions)
        parser.add_lightning_class_args(EmbeddingWriter, "prediction_writer")
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_lightning_class_args(NonFiniteLossGuard, "nonfinite")
        parser.set_defaults({"trainer.default_root_dir": "outputs/runs"})

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # `logger: true` (Lightning's default) means both CSV and TensorBoard logs under default_root_dir.
        if config.get("logger") in (True, None):
            root = config.get("default_root_dir") or "outputs/runs"
            csv = CSVLogger(save_dir=root, version=self._resumed_version(root))
            config["logger"] = [csv, TensorBoardLogger(save_dir=root, version=csv.version)]
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, Precision) for plugin in plugins):
            config["precision"] = resolve_precision(config.get("precision"), config.get("accelerator"))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        configured = list(callbacks) + list(config.get("callbacks") or [])
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            callbacks = [*callbacks, RichProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def _resumed_version(self, root: str) -> int | None:
        """With ``--ckpt_path last`` and the default checkpoint folder (under the logger's version), the version
        whose ``last.ckpt`` is newest: Lightning then finds that checkpoint, and logs continue in its folder."""
        config = self.config.get(str(self.subcommand), {}) if self.subcommand else {}
        checkpoint = config.get("checkpoint") or {}
        if config.get("ckpt_path") != "last" or checkpoint.get("dirpath"):
            return None
        return last_checkpoint_version(root)


def explicit_model_arguments(args: list) -> list[str]:
    """The recipe arguments set one by one on a command line: ``--model.lr 1e-3``, ``--model.init_args.lr=1e-3``."""
    keys: list[str] = []
    for token in args:
        if isinstance(token, str) and token.startswith("--model."):
            name = token[len("--model.") :].split("=", 1)[0].removeprefix("init_args.").split(".", 1)[0]
            if name not in ("class_path", "init_args", "dict_kwargs") and name not in keys:
                keys.append(name)
    return keys


def main(args: list[str] | None = None, run: bool = True) -> VFMCLI:
    return VFMCLI(
        model_class=L.LightningModule,
        datamodule_class=VideoTextDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
