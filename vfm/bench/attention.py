"""`python -m vfm.bench.attention`: forward + backward time of one attention layer with each of SDPA's CPU
backends (flash kernel, math), at ViT-B/16 x 8 frames by default (q, k, v of [2, 12, 1569, 64], bf16).

It isolates the op that dominates the bf16 CPU training step (docs/BENCHMARKS.md): on this machine the flash
kernel's backward costs several times its forward.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def time_attention(backend: str, shape: tuple[int, int, int, int], dtype: torch.dtype, repeats: int = 3) -> dict:
    """Median seconds of forward alone and of forward + backward, and the gradients (for comparison)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=generator).to(dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, generator=generator).to(dtype)
    forward, both = [], []
    with sdpa_kernel([BACKENDS[backend]]):
        for _ in range(repeats + 1):  # the first is a warm-up
            for tensor in (q, k, v):
                tensor.grad = None
            start = time.perf_counter()
            out = F.scaled_dot_product_attention(q, k, v)
            middle = time.perf_counter()
            out.backward(grad)
            forward.append(middle - start)
            both.append(time.perf_counter() - start)
    median = lambda values: sorted(values[1:])[len(values[1:]) // 2]
    return {"forward_s": median(forward), "forward_backward_s": median(both), "grads": [q.grad, k.grad, v.grad]}


def run(
    batch: int = 2, heads: int = 12, tokens: int = 1569, head_dim: int = 64, dtype: str = "bfloat16", repeats: int = 3
) -> dict:
    shape, torch_dtype = (batch, heads, tokens, head_dim), getattr(torch, dtype)
    results = {name: time_attention(name, shape, torch_dtype, repeats) for name in BACKENDS}
    report = {"shape": list(shape), "dtype": dtype, "threads": torch.get_num_threads()}
    for name, result in results.items():
        report[name] = {key: float(f"{value:.4g}") for key, value in result.items() if key != "grads"}
        report[name]["backward_over_forward"] = round(
            (result["forward_backward_s"] - result["forward_s"]) / result["forward_s"], 2
        )
    flash, math = results["flash"]["grads"], results["math"]["grads"]
    report["max_relative_grad_difference"] = max(
        ((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(flash, math)
    )
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=1569, help="8 frames x 196 patches + CLS")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    report = run(args.batch, args.heads, args.tokens, args.head_dim, args.dtype, args.repeats)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
