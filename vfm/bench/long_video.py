"""Long-video memory benchmark (recipe 3): peak tensor memory and time of one training step of the video
encoder against the number of frames, unmasked and with 75% masking, with and without gradient
checkpointing, batch 1.

What "peak memory" is here: the largest total size of live tensors during one steady-state training step
(forward, loss, backward, AdamW step), counted by PyTorch's ``MemTracker`` (a dispatch mode that follows
every tensor storage an operator creates until it is freed): parameters, gradients, optimizer state, the
input clip, activations saved for backward and temporaries. It is what ``torch.cuda.max_memory_allocated``
reports on a GPU, minus allocator rounding and caching; scratch buffers private to a kernel are not seen.
The text tower is left out: its memory does not depend on the number of frames.

``long_mem_ratio``: ViT-B/16 at 224 px, peak at 4x the frames (32) with 75% masking and checkpointing over
the peak at 1x (8) unmasked without checkpointing, both measured in this run. The table uses the demo
model (``vit-demo``, 64 px, 16 patches a frame), small enough to run 256 frames unmasked on a CPU.
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F
from torch.distributed._tools.mem_tracker import MemTracker

from vfm.models import VideoViT, create_video_vit

MiB = 2**20
FRAMES = (16, 32, 64, 128, 256)
# name -> (drop ratio, gradient checkpointing). All layers are trained: MemTracker cannot follow frozen
# parameters (it hooks every parameter's gradient), so the long stage's frozen blocks, which save more, are
# not in the table.
SETTINGS = {"unmasked": (0.0, False), "masked": (0.75, False), "masked_ckpt": (0.75, True)}


class EncoderStep:
    """One video encoder, its AdamW and a random clip: a training step to measure."""

    def __init__(self, model: str, frames: int, size: int, drop_ratio: float, checkpointing: bool) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random towers: only shapes matter here
            self.encoder: VideoViT = create_video_vit(model, num_frames=frames, drop_ratio=drop_ratio).train()
        self.encoder.set_grad_checkpointing(checkpointing)
        params = list(self.encoder.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        self.video = torch.randn(1, frames, 3, size, size)
        self.target = F.normalize(torch.randn(1, self.encoder.output_dim), dim=-1)
        for param in params:  # create the optimizer state, as after the first step, without a step
            param.grad = torch.zeros_like(param)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        embedding = F.normalize(self.encoder(self.video), dim=-1)
        loss = 1 - (embedding * self.target).sum()  # any scalar of the embedding: memory depends on shapes
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def peak_bytes(self) -> dict[str, int]:
        """Peak live tensor bytes of one step, in total and by kind at that moment."""
        tracker = MemTracker()
        tracker.track_external(self.encoder, self.optimizer, self.video, self.target)
        with tracker:
            self.step()
        (snapshot,) = tracker.get_tracker_snapshot("peak").values()
        return {str(getattr(kind, "value", kind)): int(size) for kind, size in snapshot.items()}

    def seconds(self, repeats: int = 5) -> tuple[float, float]:
        """(fastest wall-clock seconds, median CPU seconds of all threads) of a step. On a shared machine
        the CPU time is the steadier figure: time spent waiting for a core is not counted."""
        self.step()  # warm-up
        wall, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            self.step()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        return min(wall), sorted(cpu)[len(cpu) // 2]


def memory_table(model: str = "vit-demo", size: int = 64, frames: tuple[int, ...] = FRAMES) -> list[dict]:
    rows = []
    for count in frames:
        for name, (ratio, checkpointing) in SETTINGS.items():
            step = EncoderStep(model, count, size, ratio, checkpointing)
            peak = step.peak_bytes()
            wall, cpu = step.seconds()
            rows.append({
                "frames": count, "setting": name, "peak_mib": round(peak["Total"] / MiB, 2),
                "activation_mib": round((peak["Activation"] + peak["Temp"]) / MiB, 2),
                "step_seconds": round(wall, 3), "step_cpu_seconds": round(cpu, 3),
            })  # fmt: skip
    return rows


def mem_ratio(model: str, size: int, frames: int) -> dict:
    """Peak at 4x ``frames`` (75% masked, checkpointing) over 1x (unmasked, no checkpointing)."""
    base = EncoderStep(model, frames, size, 0.0, False).peak_bytes()
    long = EncoderStep(model, 4 * frames, size, 0.75, True).peak_bytes()
    return {
        "ratio": round(long["Total"] / base["Total"], 3),
        "peak_mib_1x_unmasked": round(base["Total"] / MiB, 1),
        "peak_mib_4x_masked_ckpt": round(long["Total"] / MiB, 1),
        "model": model, "image_size": size, "frames_1x": frames, "batch_size": 1,
    }  # fmt: skip


def run() -> dict:
    vit_b = mem_ratio("ViT-B-16", 224, 8)
    demo = mem_ratio("vit-demo", 64, 16)
    table = memory_table()
    return {
        "long_mem_ratio": vit_b["ratio"],
        "long_video_detail": {
            "long_mem_ratio_vit_b16": vit_b,
            "long_mem_ratio_vit_demo_16_to_64": demo,
            "memory_table": {"model": "vit-demo", "image_size": 64, "batch_size": 1, "rows": table},
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }


def markdown_table(rows: list[dict]) -> str:
    """The table of docs/BENCHMARKS.md: peak MiB, and CPU / wall seconds of a step, per frame count and setting."""
    names = list(SETTINGS)
    header = " | ".join(f"{n}: MiB, CPU s, wall s" for n in names)
    lines = [f"| frames | {header} |", "|---" * (len(names) + 1) + "|"]
    for count in sorted({row["frames"] for row in rows}):
        cells = {row["setting"]: row for row in rows if row["frames"] == count}
        lines.append(f"| {count} | " + " | ".join(
            f"{c['peak_mib']:.1f}, {c['step_cpu_seconds']:.2f}, {c['step_seconds']:.2f}" for c in map(cells.get, names)
        ) + " |")  # fmt: skip
    return "\n".join(lines)
