"""Training-step benchmark of the post-pretraining recipe at ViT-B/16 scale (8 x 224 px, batch 2) on CPU:
speedup from patch dropping, bf16 autocast vs fp32, and model FLOPs utilisation (MFU) against this
machine's matmul peak measured in the same run and dtype."""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vfm.flops import block_matmul_rate, matmul_peak
from vfm.recipes.optim import build_adamw
from vfm.recipes.post_pretrain import PostPretrain


def _batch(batch_size: int, num_frames: int, size: int, context: int = 32) -> dict:
    text = torch.randint(1, 49000, (batch_size, context))
    text[:, 0], text[:, 12], text[:, 13:] = 49406, 49407, 0
    return {
        "video": torch.randn(batch_size, num_frames, 3, size, size),
        "text": text,
        "text_mask": text != 0,
        "caption": [f"caption {i}" for i in range(batch_size)],
    }


class StepTimer:
    """One recipe, one batch: times forward + backward + AdamW step at a given drop ratio and dtype."""

    def __init__(self, model: str, batch_size: int, num_frames: int, size: int) -> None:
        self.recipe = PostPretrain(model=model, num_frames=num_frames, mlm_weight=1.0)
        self.recipe.log_dict = lambda *args, **kwargs: None  # no trainer attached
        self.optimizer = build_adamw(self.recipe, lr=1e-4, weight_decay=0.2, betas=(0.9, 0.98))  # fused, as trained
        self.batch = _batch(batch_size, num_frames, size)

    def step(self, drop_ratio: float, dtype: torch.dtype) -> None:
        self.recipe.hparams.drop_ratio = drop_ratio
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = self.recipe.training_step(self.batch, 0)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def seconds(self, drop_ratio: float, dtype: torch.dtype, repeats: int) -> float:
        self.step(drop_ratio, dtype)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.step(drop_ratio, dtype)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    def flops(self, drop_ratio: float) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            self.step(drop_ratio, torch.float32)
        return counter.get_total_flops()


def run(model: str = "ViT-B-16", batch_size: int = 2, num_frames: int = 8, size: int = 224, repeats: int = 3) -> dict:
    timer = StepTimer(model, batch_size, num_frames, size)
    seconds = {
        (ratio, dtype): timer.seconds(ratio, dtype, repeats)
        for dtype in (torch.float32, torch.bfloat16)
        for ratio in (0.0, 0.75, 0.9)
    }
    peak = {dtype: matmul_peak(dtype) for dtype in (torch.float32, torch.bfloat16)}
    # the step's own linear-layer matmuls (all tokens of the batch, ViT width): how close to the square peak a
    # step could come if it were nothing else (the attention, norms and the optimizer take the rest)
    video = timer.recipe.video
    rows = batch_size * (num_frames * video.grid_size[0] * video.grid_size[1] + video.num_prefix_tokens)
    mlp_width = video.blocks[0].mlp.c_fc.out_features
    block = {dtype: block_matmul_rate(rows, video.width, mlp_width, dtype) for dtype in peak}
    flops = timer.flops(0.0)
    fp32, bf16 = torch.float32, torch.bfloat16
    return {
        "drop75_step_speedup": round(seconds[0.0, fp32] / seconds[0.75, fp32], 3),
        "drop90_step_speedup": round(seconds[0.0, fp32] / seconds[0.9, fp32], 3),
        "bf16_vs_fp32_step_speedup": round(seconds[0.0, fp32] / seconds[0.0, bf16], 3),
        "mfu_cpu": round(flops / seconds[0.0, bf16] / peak[bf16], 3),
        "mfu_cpu_fp32": round(flops / seconds[0.0, fp32] / peak[fp32], 3),
        "mfu_cpu_matmul_ceiling": round(block[bf16] / peak[bf16], 3),
        "model_step_detail": {
            "model": model,
            "batch_size": batch_size,
            "num_frames": num_frames,
            "image_size": size,
            "step_seconds": {
                f"{dtype}_drop{ratio}".replace("torch.", ""): round(s, 3) for (ratio, dtype), s in seconds.items()
            },
            "drop_bf16_speedups": {f"drop{r}": round(seconds[0.0, bf16] / seconds[r, bf16], 3) for r in (0.75, 0.9)},
            "model_flops_per_step_drop0": flops,
            "matmul_peak_gflops": {str(d).replace("torch.", ""): round(p / 1e9, 1) for d, p in peak.items()},
            "block_matmul_gflops": {str(d).replace("torch.", ""): round(r / 1e9, 1) for d, r in block.items()},
            "block_matmul_rows": rows,
        },
    }
