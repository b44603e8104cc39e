"""Model FLOPs of a training step and the peak FLOP/s they are compared with (MFU).

Model FLOPs are counted, not estimated: PyTorch's ``FlopCounterMode`` sees every matmul, convolution and
attention kernel of one forward + backward, so dropped tokens, frozen layers (no weight gradients), a frozen
teacher (forward only) and every recipe's extra heads are counted as they run. What is *not* model work is
left out: the forward passes that activation checkpointing repeats during backward (counted, then
subtracted), and elementwise operations (negligible next to the matmuls, and not counted by convention).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) tensor-core peaks in FLOP/s by GPU name fragment, for bf16/fp16 and tf32. Vendor sheets
# quote the sparse figure (2x) first; these are the dense ones MFU is defined against.
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "gh200": {"bf16": 989e12, "tf32": 494.7e12},
    "h200": {"bf16": 989e12, "tf32": 494.7e12},
    "h100 nvl": {"bf16": 835e12, "tf32": 417.5e12},
    "h100 pcie": {"bf16": 756e12, "tf32": 378e12},
    "h100": {"bf16": 989e12, "tf32": 494.7e12},  # SXM (HBM3)
    "b200": {"bf16": 2250e12, "tf32": 1125e12},
    "a100": {"bf16": 312e12, "tf32": 156e12},
    "l40s": {"bf16": 362e12, "tf32": 183e12},
}


def gpu_peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """Dense peak of a GPU for ``dtype`` (fp32 matmuls run as tf32 unless the precision is "highest")."""
    name = device_name.lower()
    for fragment, peaks in GPU_PEAK_FLOPS.items():
        if fragment in name:
            if dtype in (torch.bfloat16, torch.float16):
                return peaks["bf16"]
            if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
                return peaks["tf32"]
            return None
    return None


def matmul_peak(dtype: torch.dtype, size: int = 4096, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Best FLOP/s of a square matmul in ``dtype``: the roofline a CPU's MFU is measured against."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def block_matmul_rate(
    rows: int, width: int, mlp_width: int, dtype: torch.dtype, repeats: int = 3, device: str | torch.device = "cpu"
) -> float:
    """FLOP/s of the matmuls of one transformer block's linear layers at ``rows`` tokens (qkv, output projection,
    MLP in and out; each forward product and its two backward products), best of ``repeats``: what a training
    step made of nothing but these could reach, against ``matmul_peak``'s square 4096 x 4096."""
    shapes = [(width, 3 * width), (width, width), (width, mlp_width), (mlp_width, width)]
    products = []
    for d_in, d_out in shapes:  # y = x W (rows x d_in @ d_in x d_out); dx = dy W^T; dW = x^T dy
        products += [(rows, d_in, d_out), (rows, d_out, d_in), (d_in, rows, d_out)]
    operands = [
        (torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device))
        for m, k, n in products
    ]
    flops = sum(2 * m * k * n for m, k, n in products)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        _synchronize(device)
        start = time.perf_counter()
        for a, b in operands:
            a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return flops / best


def _synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StepFlopCounter:
    """Counts the model FLOPs of one training step: ``forward()`` then ``backward()`` around the two phases.

    During backward every module call is a recomputation by activation checkpointing (real backward work
    calls no module), so the FLOPs inside outermost module calls of that phase are subtracted.
    """

    def __init__(self) -> None:
        self._counter = FlopCounterMode(display=False)
        self._active = False
        self._in_backward = False
        self._depth = 0
        self._mark = 0
        self.recomputed = 0
        self._hooks: list = []

    @property
    def total(self) -> int:
        return self._counter.get_total_flops() - self.recomputed

    def start(self) -> None:
        self._hooks = [
            nn.modules.module.register_module_forward_pre_hook(self._pre_hook),
            nn.modules.module.register_module_forward_hook(self._post_hook, always_call=True),
        ]
        self._counter.__enter__()
        self._active = True

    def start_backward(self) -> None:
        self._in_backward = True

    def stop(self) -> int:
        if self._active:
            self._counter.__exit__(None, None, None)
            self._active = False
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return self.total

    def _pre_hook(self, module: nn.Module, args: tuple) -> None:
        if self._in_backward:
            if self._depth == 0:
                self._mark = self._counter.get_total_flops()
            self._depth += 1

    def _post_hook(self, module: nn.Module, args: tuple, output: object) -> None:
        if self._in_backward and self._depth > 0:
            self._depth -= 1
            if self._depth == 0:
                self.recomputed += self._counter.get_total_flops() - self._mark


@contextmanager
def count_step_flops() -> Iterator[StepFlopCounter]:
    """``with count_step_flops() as c: loss = f(); c.start_backward(); loss.backward()`` -> ``c.total``."""
    counter = StepFlopCounter()
    counter.start()
    try:
        yield counter
    finally:
        counter.stop()
