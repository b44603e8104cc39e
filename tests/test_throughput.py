"""Throughput and MFU: counted model FLOPs (recomputation left out), visible tokens, logged rates."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vfm.flops import count_step_flops, gpu_peak_flops
from vfm.models import create_video_vit
from vfm.models.blocks import block_types, first_block, frozen_modules, transformer_blocks
from vfm.models.layers import Block
from vfm.throughput import Throughput, batch_size, precision_dtype, throughput_metrics


def tiny_encoder(drop_ratio: float = 0.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_video_vit("vit-tiny-test", num_frames=4, drop_ratio=drop_ratio)


def step_flops(encoder, video: torch.Tensor) -> int:
    with count_step_flops() as counter:
        loss = encoder(video).square().sum()
        counter.start_backward()
        loss.backward()
    return counter.total


def test_recomputation_by_activation_checkpointing_is_not_model_flops():
    encoder, video = tiny_encoder(), torch.randn(2, 4, 3, 32, 32)
    plain = step_flops(encoder, video)
    with FlopCounterMode(display=False) as reference:
        encoder(video).square().sum().backward()
    assert plain == reference.get_total_flops() > 0
    encoder.set_grad_checkpointing(True)
    assert step_flops(encoder, video) == plain


def test_dropping_tokens_cuts_the_counted_flops():
    video = torch.randn(2, 4, 3, 32, 32)
    full, dropped = step_flops(tiny_encoder(0.0).train(), video), step_flops(tiny_encoder(0.75).train(), video)
    assert dropped < 0.5 * full


def test_rates_over_a_window():
    steps = [(0.5, 4, 40, 1_000), (0.5, 4, 40, None), (1.0, 4, 40, 3_000)]
    metrics = throughput_metrics(steps, world_size=2, peak=1_000.0)
    assert metrics["perf/samples_per_s"] == pytest.approx(2 * 12 / 2.0)
    assert metrics["perf/tokens_per_s"] == pytest.approx(2 * 120 / 2.0)
    assert metrics["perf/mfu"] == pytest.approx(4_000 / 1.5 / 1_000)  # steps with a FLOPs count only
    assert throughput_metrics([], 1, None) == {}


def test_helpers():
    assert batch_size({"video": torch.zeros(3, 2), "text": torch.zeros(5)}) == 3
    assert batch_size([torch.zeros(7, 1)]) == 7
    assert precision_dtype("bf16-mixed") == torch.bfloat16 and precision_dtype("32-true") == torch.float32
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert gpu_peak_flops("NVIDIA H200", torch.bfloat16) == 989e12  # dense, not the 2x sparse figure
    assert gpu_peak_flops("NVIDIA H100 PCIe", torch.bfloat16) == 756e12


def test_block_discovery_and_frozen_subtrees():
    encoder = tiny_encoder()
    assert block_types(encoder) == {Block}
    assert first_block(encoder) is encoder.blocks[0] and len(transformer_blocks(encoder)) == len(encoder.blocks)
    model = torch.nn.ModuleDict({"video": encoder, "teacher": tiny_encoder().requires_grad_(False)})
    model["video"].blocks[0].requires_grad_(False)
    assert frozen_modules(model) == [model["video"].blocks[0], model["teacher"]]


class VideoRegression(L.LightningModule):
    def __init__(self, drop_ratio: float) -> None:
        super().__init__()
        self.video = tiny_encoder(drop_ratio)

    def training_step(self, batch, batch_idx):
        return self.video(batch["video"]).square().mean()

    def train_dataloader(self):
        clips = [{"video": torch.randn(4, 3, 32, 32)} for _ in range(24)]
        return torch.utils.data.DataLoader(clips, batch_size=3)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_callback_logs_samples_tokens_and_mfu():
    throughput = Throughput(window=4, peak_flops=1e9)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, callbacks=[throughput], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    module = VideoRegression(drop_ratio=0.75)
    trainer.fit(module)
    metrics = trainer.callback_metrics
    assert {"perf/samples_per_s", "perf/tokens_per_s", "perf/mfu", "perf/tflops_per_s"} <= set(metrics)
    # 16 patches a frame x 4 frames, 75% dropped, + CLS: 17 visible tokens a clip, 3 clips a step
    assert list(throughput._flops) == [(3, 3 * 17)]
    ratio = float(metrics["perf/tokens_per_s"]) / float(metrics["perf/samples_per_s"])
    assert ratio == pytest.approx(17)
    assert 0 < float(metrics["perf/mfu"]) == pytest.approx(float(metrics["perf/tflops_per_s"]) * 1e12 / 1e9)
