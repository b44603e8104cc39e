"""Data parallel training on the CPU (gloo): two processes of the post-pretraining recipe.

- through the command line and ``configs/trainer/ddp.yaml`` under torchrun: each rank reads its own samples,
  uneven training shards and an odd number of validation samples finish (a hang would hit the timeout);
- the all-gathered contrastive loss and the averaged gradients of two ranks equal those of one process
  that sees the whole global batch.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_POST_PRETRAIN, TrainingStep, clip_sample, write_shards

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_shards")
    start = 0
    for number, count in enumerate([5, 3, 6, 2]):  # uneven shards, read without resampling
        write_shards(root / "train", [clip_sample(start + i) for i in range(count)], count, f"train-{number}")
        start += count
    write_shards(root / "val", [clip_sample(100 + i) for i in range(7)], 4, "val")  # 7 over 2 ranks
    return root


@pytest.mark.timeout(300)
def test_ddp_command_line_on_two_cpu_processes(uneven_shards, tmp_path):
    overlay = tmp_path / "record.yaml"
    record = f"    - class_path: record_keys.RecordKeys\n      init_args: {{output_dir: {tmp_path}}}\n"
    overlay.write_text("trainer:\n  callbacks:\n" + record)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "vfm.cli", "fit", "--config", str(ROOT / "configs/post_pretrain.yaml"),
        "--config", str(ROOT / "configs/trainer/ddp.yaml"), "--config", str(overlay),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.max_epochs", "1",
        *TINY_POST_PRETRAIN,
        "--data.train_shards", str(uneven_shards / "train/train-*.tar"), "--data.resampled", "false",
        "--data.val_shards", str(uneven_shards / "val/val-*.tar"), "--data.eval_batch_size", "2",
        "--data.num_frames", "4", "--data.image_size", "32", "--data.batch_size", "2", "--data.num_workers", "0",
        "--data.samples_per_epoch", "12", "--data.context_length", "32", "--data.shuffle_buffer", "1",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1", "--throughput.peak_flops", "1e11",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"keys-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [3, 3]
    keys = [set(r["keys"]) for r in ranks]
    assert all(len(r["keys"]) == 6 for r in ranks)  # 12 samples an epoch = 3 batches of 2 on each rank
    assert not keys[0] & keys[1], "two ranks trained on the same samples"
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs/version_0/metrics.csv")))
    evaluated = [float(row["val/num_samples"]) for row in rows if row.get("val/num_samples")]
    assert evaluated == [7.0]  # every validation sample exactly once over the two ranks


def one_step(recipe, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    loss = recipe.training_step(batch, 0)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in recipe.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def tiny_recipe():
    from vfm.recipes.post_pretrain import PostPretrain

    torch.manual_seed(0)
    recipe = PostPretrain(
        model="vit-tiny-test", num_frames=4, drop_ratio=0.0, mlm_weight=0.0, fusion_heads=4, temperature_init=0.07
    )
    recipe.log_dict = lambda *args, **kwargs: None
    return recipe


def global_batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    text = torch.randint(1, 400, (GLOBAL_BATCH, 12), generator=generator)
    text[:, 0], text[:, 8], text[:, 9:] = 49406, 49407, 0
    return {
        "video": torch.randn(GLOBAL_BATCH, 4, 3, 32, 32, generator=generator),
        "text": text,
        "text_mask": text != 0,
        "caption": [f"caption {i}" for i in range(GLOBAL_BATCH)],
    }


def local_slice(batch: dict, rank: int, world_size: int) -> dict:
    size = GLOBAL_BATCH // world_size
    return {key: value[rank * size : (rank + 1) * size] for key, value in batch.items()}


def ddp_worker(rank: int, world_size: int, init_file: str, output: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        recipe = tiny_recipe()
        model = torch.nn.parallel.DistributedDataParallel(TrainingStep(recipe))
        loss = model(local_slice(global_batch(), rank, world_size))
        loss.backward()
        grads = {name: p.grad for name, p in recipe.named_parameters() if p.grad is not None}
        torch.save({"loss": float(loss.detach()), "grads": grads}, f"{output}.rank{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_all_gathered_loss_and_gradients_equal_one_process_on_the_global_batch(tmp_path):
    mp.spawn(ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    loss, grads = one_step(tiny_recipe(), global_batch())
    for rank in (0, 1):
        result = torch.load(tmp_path / f"out.rank{rank}", weights_only=True)
        assert result["loss"] == pytest.approx(loss, rel=1e-5)  # every rank computes the global loss
        assert result["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
