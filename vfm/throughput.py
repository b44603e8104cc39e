"""Throughput callback: samples/s, visible tokens/s and MFU of training, on the progress bar and in the logs.

Lightning's ``ThroughputMonitor`` wants one fixed FLOPs-per-batch figure and has no CPU peak; here the token
count changes with the dropping schedule (and the unmasked phase), so the FLOPs of a step are counted with
`vfm.flops.StepFlopCounter` on the first step of every new (batch size, visible tokens) shape and reused for
later steps of that shape. Counted steps run slower and are left out of the timings.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from vfm.flops import StepFlopCounter, gpu_peak_flops, matmul_peak
from vfm.models.blocks import first_block

_CPU_PEAKS: dict[torch.dtype, float] = {}


def precision_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a Lightning precision setting (``bf16-mixed`` -> bfloat16, ``32-true`` -> float32)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device: the dense tensor-core table for GPUs (Lightning's table for the ones vfm's does
    not list), a matmul measured once per process on the CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return gpu_peak_flops(name, dtype) or get_available_flops(device, dtype)
    if device.type == "cpu":
        if dtype not in _CPU_PEAKS:
            _CPU_PEAKS[dtype] = matmul_peak(dtype, size=2048, repeats=3)
        return _CPU_PEAKS[dtype]
    return None


class Throughput(L.Callback):
    """Logs ``perf/samples_per_s`` and ``perf/tokens_per_s`` (all devices), ``perf/mfu`` and ``perf/tflops_per_s``
    (per device) over the last ``window`` training steps.

    Args:
        window: steps the rates are averaged over.
        peak_flops: peak FLOP/s of one device; None looks it up by GPU name, or measures a matmul on the CPU.
        token_module: attribute of the recipe whose first transformer block's input is counted as the visible
            tokens (the video tower, ``video``, in every recipe); tokens/s is left out if there is none.
        count_flops: count the model FLOPs of steps (needed for MFU).
        prog_bar: show samples/s and MFU on the progress bar.
    """

    def __init__(
        self,
        window: int = 20,
        peak_flops: float | None = None,
        token_module: str = "video",
        count_flops: bool = True,
        prog_bar: bool = True,
    ) -> None:
        self.window, self.peak, self.token_module = window, peak_flops, token_module
        self.count_flops, self.prog_bar = count_flops, prog_bar
        self._steps: deque[tuple[float, int, int, int | None]] = deque(maxlen=window)
        self._flops: dict[tuple[int, int], int] = {}
        self._counter: StepFlopCounter | None = None
        self._measure_next = True
        self._last_end: float | None = None
        self._tokens = 0
        self._counting_tokens = False
        self._hook = None

    # ---- setup -----------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.peak is None and self.count_flops:
            self.peak = peak_flops(pl_module.device, precision_dtype(trainer.precision))
            if self.peak is None:
                rank_zero_warn(f"no peak FLOP/s known for {pl_module.device}: set throughput.peak_flops for MFU")
            else:
                rank_zero_info(f"MFU is measured against a peak of {self.peak / 1e12:.2f} TFLOP/s per device")
        tower = getattr(pl_module, self.token_module, None)
        block = first_block(tower) if isinstance(tower, torch.nn.Module) else None
        if block is not None:
            self._hook = block.register_forward_pre_hook(self._count_tokens)
        self._last_end = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._counter is not None:
            self._counter.stop()
            self._counter = None

    def _count_tokens(self, module: torch.nn.Module, args: tuple) -> None:
        if self._counting_tokens and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            self._tokens += x.numel() // x.shape[-1]

    # ---- per step --------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._tokens, self._counting_tokens = 0, True
        if self.count_flops and self._measure_next:
            self._counter = StepFlopCounter()
            self._counter.start()

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._counting_tokens = False  # a block re-run by activation checkpointing is not new input
        if self._counter is not None:
            self._counter.start_backward()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._counting_tokens = False
        now = time.perf_counter()
        samples = batch_size(batch)
        shape = (samples, self._tokens)
        measured = self._counter is not None
        if measured:
            self._flops[shape] = self._counter.stop()
            self._counter = None
        self._measure_next = shape not in self._flops
        if not measured and self._last_end is not None:
            self._steps.append((now - self._last_end, samples, self._tokens, self._flops.get(shape)))
            self._log(trainer, pl_module)
        self._last_end = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # the next step's time would include the validation

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = throughput_metrics(list(self._steps), trainer.world_size, self.peak)
        for name, value in metrics.items():
            show = self.prog_bar and name in ("perf/samples_per_s", "perf/mfu")
            pl_module.log(name, value, on_step=True, on_epoch=False, prog_bar=show, rank_zero_only=True)

    def state_dict(self) -> dict:
        return {}


def throughput_metrics(
    steps: list[tuple[float, int, int, int | None]], world_size: int, peak: float | None
) -> dict[str, float]:
    """Rates over ``steps`` of (seconds, samples, tokens, FLOPs or None) of one device."""
    seconds = sum(step[0] for step in steps)
    if seconds <= 0:
        return {}
    metrics = {"perf/samples_per_s": world_size * sum(step[1] for step in steps) / seconds}
    tokens = sum(step[2] for step in steps)
    if tokens:
        metrics["perf/tokens_per_s"] = world_size * tokens / seconds
    counted = [step for step in steps if step[3] is not None]
    if counted:
        flops_per_s = sum(step[3] for step in counted) / sum(step[0] for step in counted)
        metrics["perf/tflops_per_s"] = flops_per_s / 1e12
        if peak:
            metrics["perf/mfu"] = flops_per_s / peak
    return metrics


def batch_size(batch: Any) -> int:
    """Samples in a batch: the leading size of ``video`` (or of the first tensor found)."""
    if isinstance(batch, dict):
        if isinstance(batch.get("video"), torch.Tensor):
            return int(batch["video"].shape[0])
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            if isinstance(item, torch.Tensor) and item.ndim:
                return int(item.shape[0])
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) and batch.ndim else 0
