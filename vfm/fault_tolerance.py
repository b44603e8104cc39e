"""Running for days: atomic checkpoint files, a checkpoint on preemption, and a guard against NaN runs.

- `AtomicCheckpointIO`: a checkpoint is written to a temporary file next to its target and renamed over it
  (``os.replace``), so a kill at any moment leaves either the previous file or the new one, never a torn one.
  Lightning's own writer stages the file in the system temp folder and *moves* it, which is a copy (not a
  rename) whenever that folder is on another file system than the checkpoints, as it usually is on clusters.
- `PreemptionCheckpoint`: on SIGTERM (and SIGUSR1, which SLURM sends before the time limit) Lightning stops
  after the current batch; this callback then writes ``last.ckpt``, so ``fit --ckpt_path last`` continues
  from that very step. Under SLURM with auto-requeue Lightning's own SIGUSR1 handler (HPC checkpoint +
  requeue) is kept, and the SIGTERM of the requeue still writes ``last.ckpt``.
- `NonFiniteLossGuard`: a step whose loss is NaN or infinite on any rank is skipped on every rank (no
  backward, no optimizer update) and counted (``train/nonfinite_steps``); after ``max_consecutive`` such steps
  in a row the run stops with an error that names the step.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that replaces local checkpoint files atomically and loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_directory(target.parent)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # vfm checkpoints hold tensors and plain Python values only: never run the full unpickler by default
        return super().load_checkpoint(
            path, map_location=map_location or "cpu", weights_only=True if weights_only is None else weights_only
        )


def _is_local(path: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(get_filesystem(str(path)), LocalFileSystem)


def _fsync_directory(directory: Path) -> None:
    """Makes the rename itself durable (a power cut right after it would otherwise be able to undo it)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class PreemptionCheckpoint(L.Callback):
    """Writes ``last.ckpt`` (the ModelCheckpoint's last path, else ``<default_root_dir>/last.ckpt``) when a
    run stops on SIGTERM, and makes SIGUSR1 stop the run the same way unless something already handles it."""

    def __init__(self, handle_sigusr1: bool = True) -> None:
        self.handle_sigusr1 = handle_sigusr1
        self._installed = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its signal handlers (SLURM's SIGUSR1 among them) just before this hook: only an
        # unhandled SIGUSR1, whose default action is to kill the process without a checkpoint, is taken over.
        if (
            self.handle_sigusr1
            and hasattr(signal, "SIGUSR1")
            and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)
        ):
            signal.signal(signal.SIGUSR1, _stop_like_sigterm)
            self._installed = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._installed:
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            self._installed = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        rank_zero_info(f"stopped by a signal at global step {trainer.global_step}: saved {path}")

    @staticmethod
    def checkpoint_path(trainer: L.Trainer) -> str:
        callback = trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            name = callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
            return os.path.join(callback.dirpath, name)
        return os.path.join(trainer.default_root_dir, "last.ckpt")


def _stop_like_sigterm(signum: int, frame: Any) -> None:
    log.info("received signal %s: stopping after this batch as on SIGTERM", signum)
    os.kill(os.getpid(), signal.SIGTERM)


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite for too many consecutive steps."""


class NonFiniteLossGuard(L.Callback):
    """Skips steps whose loss is not finite and stops the run after ``max_consecutive`` of them in a row.

    It wraps the module's ``training_step``: a non-finite loss (on any rank: the decision is reduced over ranks,
    so every rank skips the same step) makes it return None, which Lightning treats as "skip this batch"
    (no backward, no optimizer update; the step counter and the schedule still advance). ``max_consecutive``
    0 turns the guard off.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.max_consecutive > 0 and not getattr(pl_module.training_step, "_nonfinite_guard", False):
            pl_module.training_step = self._guarded(trainer, pl_module, pl_module.training_step)

    def _guarded(self, trainer: L.Trainer, pl_module: L.LightningModule, step):
        @functools.wraps(step)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            output = step(*args, **kwargs)
            loss = output.get("loss") if isinstance(output, dict) else output
            if not isinstance(loss, torch.Tensor):
                return output
            finite = trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach()).all()), all=True)
            if finite:
                self.consecutive = 0
                return output
            self.skipped += 1
            self.consecutive += 1
            pl_module.log("train/nonfinite_steps", float(self.skipped), on_step=True, on_epoch=False)
            rank_zero_warn(f"non-finite loss {float(loss.detach())} at global step {trainer.global_step}: skipped")
            if self.consecutive >= self.max_consecutive:
                raise NonFiniteLossError(
                    f"the loss was not finite for {self.consecutive} consecutive steps, the last at global step "
                    f"{trainer.global_step} (epoch {trainer.current_epoch}); {self.skipped} steps skipped in all. "
                    "Lower the learning rate, enable gradient clipping or use bf16 instead of fp16, then resume "
                    "from a checkpoint saved before the divergence"
                )
            return None

        training_step._nonfinite_guard = True
        return training_step

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))
