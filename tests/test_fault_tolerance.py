"""Running for days: atomic checkpoints, kill (SIGKILL) and resume, a checkpoint on SIGUSR1/SIGTERM, and the
guard that skips non-finite losses and stops a diverged run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_POST_PRETRAIN, clip_sample, tiny_run_args, write_shards

from vfm.fault_tolerance import AtomicCheckpointIO, NonFiniteLossError, NonFiniteLossGuard
from vfm.recipes.optim import warmup_cosine
from vfm.runs import last_checkpoint_version, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS, LR, WARMUP = 12, 1e-3, 0.25


# ---- atomic writes ---------------------------------------------------------------------------------
def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "weight": torch.ones(3)}, path)

    def torn_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # what a kill in the middle of torch.save leaves behind

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "weight": torch.zeros(3)}, path)
    monkeypatch.undo()
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 1 and torch.equal(loaded["weight"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left over
    io.save_checkpoint({"global_step": 3}, path)
    assert io.load_checkpoint(path)["global_step"] == 3


def test_loading_refuses_pickled_code_by_default(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"object": print}, path)  # anything outside tensors and plain values needs the full unpickler
    with pytest.raises(Exception, match="(?i)weights.only"):
        AtomicCheckpointIO().load_checkpoint(path)


# ---- non-finite losses -----------------------------------------------------------------------------
class LossSchedule(L.LightningModule):
    """A linear model whose loss is NaN at the given steps."""

    def __init__(self, nan_steps: set[int]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.nan_steps = nan_steps
        self.updates: list[int] = []

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        return loss * float("nan") if self.global_step in self.nan_steps else loss

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.before = self.layer.weight.detach().clone()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if not torch.equal(self.before, self.layer.weight):
            self.updates.append(batch_idx)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(module: L.LightningModule, guard: NonFiniteLossGuard, steps: int) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module)
    return trainer


def test_non_finite_steps_are_skipped_and_counted():
    module, guard = LossSchedule({2, 5, 6}), NonFiniteLossGuard(max_consecutive=3)
    trainer = fit(module, guard, steps=10)
    assert module.updates == [0, 1, 3, 4, 7, 8, 9]  # no update at the NaN steps
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert guard.skipped == 3 and guard.consecutive == 0 and trainer.global_step == 10


def test_consecutive_non_finite_steps_stop_the_run_naming_the_step():
    module, guard = LossSchedule({3, 4, 5, 6, 7}), NonFiniteLossGuard(max_consecutive=3)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps, the last at global step 5"):
        fit(module, guard, steps=10)
    assert module.updates == [0, 1, 2]


# ---- resolved run settings -------------------------------------------------------------------------
def test_precision_null_is_32_true_on_cpu_and_explicit_values_are_kept():
    assert resolve_precision(None, "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    if not torch.cuda.is_available():
        assert resolve_precision(None, "auto") == "32-true"


def test_last_checkpoint_version_picks_the_newest_last_ckpt(tmp_path):
    for version, stamp in [(0, 100), (1, 300), (2, 200)]:
        path = tmp_path / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (stamp, stamp))
    (tmp_path / "lightning_logs" / "version_3").mkdir()  # a run that died before its first checkpoint
    assert last_checkpoint_version(tmp_path) == 1
    assert last_checkpoint_version(tmp_path / "nothing") is None


# ---- the command line, killed and resumed ------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ft_shards")
    write_shards(directory, [clip_sample(i) for i in range(16)], 8, "train")
    return directory


def cli_command(shards: Path, root: Path, *extra: str, delay: float = 0.3) -> list[str]:
    overlay = root / "delay.yaml"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    delay_callback = f"    - class_path: step_delay.StepDelay\n      init_args: {{seconds: {delay}}}\n"
    overlay.write_text("trainer:\n  callbacks:\n" + delay_callback)
    return [
        sys.executable, "-m", "vfm.cli", "fit", "--config", str(ROOT / "configs/post_pretrain.yaml"),
        "--config", str(overlay),
        *TINY_POST_PRETRAIN,
        "--model.lr", str(LR), "--model.warmup", str(WARMUP),
        "--data.train_shards", str(shards / "train-*.tar"), "--data.val_shards", "null",
        *tiny_run_args(root=root),
        "--trainer.max_steps", str(MAX_STEPS), "--trainer.log_every_n_steps", "1",
        "--checkpoint.every_n_train_steps", "1", "--throughput.peak_flops", "1e11", *extra,
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}


def wait_for_step(process: subprocess.Popen, path: Path, step: int, timeout: float = 120) -> list[int]:
    """Polls ``last.ckpt`` until it holds ``step`` or more; returns every step seen (each read must succeed)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        if path.is_file():
            seen.append(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
            if seen[-1] >= step:
                return seen
        time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"no checkpoint at step {step} within {timeout} s (saw {seen})")


def logged_lrs(root: Path) -> dict[int, float]:
    rows = {}
    for path in root.glob("lightning_logs/version_*/metrics.csv"):
        with open(path) as file:
            for row in csv.DictReader(file):
                if row.get("lr-AdamW/pg1"):
                    rows[int(row["step"])] = float(row["lr-AdamW/pg1"])
    return rows


def test_sigkill_then_ckpt_path_last_continues_step_optimizer_and_schedule(shards, tmp_path):
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(cli_command(shards, tmp_path), cwd=ROOT, env=environment(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    seen = wait_for_step(process, last, 6)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 6 <= killed_at < MAX_STEPS, seen

    resumed = subprocess.run(cli_command(shards, tmp_path, "--ckpt_path", "last", delay=0.0), cwd=ROOT,
                             env=environment(), text=True, capture_output=True, timeout=240)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr + resumed.stdout
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == MAX_STEPS
    assert final["lr_schedulers"][0]["last_epoch"] == MAX_STEPS
    assert {state["step"].item() for state in final["optimizer_states"][0]["state"].values()} == {MAX_STEPS}
    # the resumed run logs into the same version and its learning rates continue the one schedule
    assert not (tmp_path / "lightning_logs" / "version_1").exists()
    factor = warmup_cosine(MAX_STEPS, WARMUP)
    lrs = logged_lrs(tmp_path)
    assert set(range(killed_at, MAX_STEPS)) <= set(lrs)
    for step, lr in lrs.items():
        assert lr == pytest.approx(LR * factor(step), rel=1e-6), step


def test_sigusr1_stops_after_the_batch_and_saves_last_ckpt(shards, tmp_path):
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    command = cli_command(shards, tmp_path, "--checkpoint.every_n_train_steps", "null", delay=0.5)
    process = subprocess.Popen(command, cwd=ROOT, env=environment(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    wait_for_step(process, last, 4)  # the end of the first epoch (4 batches) writes last.ckpt
    process.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit; treated as SIGTERM
    _, stderr = process.communicate(timeout=120)
    saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert "stopped by a signal at global step" in stderr, stderr[-3000:]
    assert 4 < saved < MAX_STEPS  # written on the way out, mid-epoch, not by the epoch-end checkpoint
    assert f"stopped by a signal at global step {saved}" in stderr
