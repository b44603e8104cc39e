"""`vfm.bench.model_step` at test size: every figure of the report, and the block-matmul ceiling's FLOP count."""

import torch

from vfm.bench import model_step
from vfm.flops import block_matmul_rate


def test_model_step_reports_every_figure_at_test_size():
    report = model_step.run(model="vit-tiny-test", batch_size=2, num_frames=2, size=32, repeats=1)
    for key in ("drop75_step_speedup", "drop90_step_speedup", "bf16_vs_fp32_step_speedup", "mfu_cpu", "mfu_cpu_fp32"):
        assert report[key] > 0, key
    detail = report["model_step_detail"]
    video = model_step.StepTimer("vit-tiny-test", 2, 2, 32).recipe.video
    assert detail["block_matmul_rows"] == 2 * (2 * video.grid_size[0] * video.grid_size[1] + video.num_prefix_tokens)
    assert report["mfu_cpu_matmul_ceiling"] > 0 and set(detail["block_matmul_gflops"]) == {"float32", "bfloat16"}


def test_block_matmul_rate_counts_forward_and_both_backward_products(monkeypatch):
    clock = iter(range(100))  # every perf_counter() one second later: each pass over the products takes 1 s
    monkeypatch.setattr("vfm.flops.time.perf_counter", lambda: float(next(clock)))
    rows, width, mlp = 6, 4, 16
    linear = 2 * rows * (width * 3 * width + width * width + width * mlp + mlp * width)  # forward of the 4 layers
    assert block_matmul_rate(rows, width, mlp, torch.float32, repeats=2) == 3 * linear
