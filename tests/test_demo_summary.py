"""`vfm.demo` bookkeeping: entries chain through the summary, each records its wall time, nothing is lost."""

import io
import itertools
import json
from pathlib import Path

import pytest
from rich.console import Console

from vfm import demo, demo_lanes


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "SUMMARY", tmp_path / "summary.json")
    monkeypatch.setattr(demo, "prepare", lambda name: None)
    calls = []

    def run_entry(name, extra):
        calls.append((name, "fit", extra))
        checkpoint = tmp_path / f"{name}.ckpt"
        checkpoint.write_text("weights")
        return {"top1": 0.5, "train_seconds": 1.0, "checkpoint": str(checkpoint)}

    def run_probe(prefix, checkpoint, extra):
        calls.append((prefix, "probe", [f"--model.init_from={checkpoint}", *extra]))
        return {f"{prefix}_top1": 0.4, f"{prefix}_chance_top1": 0.1}

    clock = itertools.count()  # every perf_counter() call one second later: each entry lasts 1 s
    monkeypatch.setattr(demo.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setattr(demo, "run_entry", run_entry)
    monkeypatch.setattr(demo, "run_probe", run_probe)
    return calls


def test_entries_start_from_the_checkpoints_named_in_the_summary(fake_runs, tmp_path):
    summary = demo.main(["--jobs", "1", "--only", "post_pretrain", "finetune_classification", "umt"])
    finetune = [extra for name, _, extra in fake_runs if name in ("finetune_classification", "linear_probe")]
    assert len(finetune) == 2  # the fine-tune and the linear probe of the encoder it starts from
    assert all(f"--model.init_from={tmp_path / 'post_pretrain.ckpt'}" in extra for extra in finetune)
    assert summary["finetune_classification"]["linear_probe_top1"] == 0.4
    probes = {name: extra for name, kind, extra in fake_runs if kind == "probe"}
    assert f"--model.init_from={tmp_path / 'umt.ckpt'}" in probes["probe_shape"]  # the UMT probes read its own
    # the UMT entry reports its probe's chance level as chance_top1 beside probe_top1
    assert summary["umt"]["probe_top1"] == 0.4 and summary["umt"]["chance_top1"] == 0.1
    umt_args = [arg for name, _, extra in fake_runs if name == "umt" for arg in extra]
    assert f"--model.teacher={tmp_path / 'post_pretrain.ckpt'}" in umt_args
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert [saved[name]["seconds"] for name in ("post_pretrain", "finetune_classification", "umt")] == [1.0] * 3


def test_an_entry_without_its_source_checkpoint_stops_with_the_command_to_run(fake_runs, tmp_path):
    with pytest.raises(SystemExit, match="--only post_pretrain finetune_classification"):
        demo.main(["--only", "finetune_classification"])
    with pytest.raises(SystemExit, match="--only post_pretrain umt`"):  # also side by side, before anything runs
        demo.main(["--jobs", "2", "--only", "finetune_classification", "umt"])
    assert not (tmp_path / "summary.json").exists()


def test_table_lists_every_entry_and_the_total_minutes():
    console = Console(width=100, record=True, file=io.StringIO())
    demo.print_table({"a": {"t2v_r1": 0.0703, "seconds": 60.0}, "b": {"top1": 0.5, "seconds": 120.0}}, console)
    out = console.export_text()
    assert "t2v_r1 0.0703" in out and "top1 0.5000" in out
    total = next(line for line in out.splitlines() if "all entries" in line)
    assert total.rstrip(" │").endswith("3.0")  # 60 s + 120 s
    assert "wall clock" not in out
    demo.print_table({"a": {"seconds": 60.0}}, console, wall_seconds=90.0)
    wall = next(line for line in console.export_text().splitlines() if "wall clock" in line)
    assert wall.rstrip(" │").endswith("1.5")


def test_side_by_side_entries_run_as_children_and_merge_in_entry_order(tmp_path, monkeypatch):
    """`--jobs 2`: each entry is a `python -m vfm.demo --only NAME` child with its thread count and log; the
    parent merges the result each child writes, in ENTRIES order, and records the run's wall clock."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "SUMMARY", tmp_path / "outputs/demo/summary.json")
    monkeypatch.setattr(demo, "prepare", lambda name: None)
    monkeypatch.setattr(demo, "usable_cores", lambda: 4)
    children = []

    class Child:  # writes its result the way `--result` does, and has exited by the first poll
        def __init__(self, command, stdout, stderr, env):
            name, result = command[-1], Path(command[command.index("--result") + 1])
            summary = json.loads(demo.SUMMARY.read_text()) if demo.SUMMARY.is_file() else {}
            for source in (demo.INIT_FROM.get(name), demo.TEACHER_FROM.get(name)):
                if source:  # the entry it starts from is done and in the summary before it starts
                    assert Path(summary[source]["checkpoint"]).is_file()
            children.append((name, command, env["OMP_NUM_THREADS"], stdout.name))
            checkpoint = tmp_path / f"{name}.ckpt"
            checkpoint.write_text("weights")
            result.write_text(json.dumps({"top1": 0.5, "checkpoint": str(checkpoint), "seconds": 60.0}))

        def poll(self):
            return 0

    monkeypatch.setattr(demo.subprocess, "Popen", Child)
    monkeypatch.setattr(demo_lanes.time, "sleep", lambda seconds: None)
    names = ["finetune_classification", "umt", "post_pretrain", "umt"]  # any order, repeats run once
    summary = demo.main(["--jobs", "2", "--only", *names, "--trainer.max_steps", "3"])
    assert [name for name, *_ in children] == ["post_pretrain", "umt", "finetune_classification"]
    assert {name: threads for name, _, threads, _ in children} == {
        "post_pretrain": "4", "umt": "2", "finetune_classification": "2"
    }  # fmt: skip
    for name, command, _, log in children:
        assert command[1:3] == ["-m", "vfm.demo"] and command[-2:] == ["--only", name]
        assert ["--trainer.max_steps", "3"] == command[-4:-2]  # user arguments pass through
        assert log == f"outputs/demo/{name}/demo.log"
    assert list(summary) == ["post_pretrain", "finetune_classification", "umt"]  # ENTRIES order
    assert json.loads(demo.SUMMARY.read_text()) == summary
    run = json.loads((tmp_path / "outputs/demo/run.json").read_text())
    assert run["jobs"] == 2 and run["failed"] == {} and run["wall_seconds"] >= 0


def test_fits_skip_validation_and_user_arguments_come_last(monkeypatch):
    calls = []

    class Run:
        def __init__(self, argv):
            callback = type("Checkpoint", (), {"last_model_path": "last.ckpt", "best_model_path": ""})
            self.trainer = type(
                "Trainer", (), {"checkpoint_callback": callback, "callback_metrics": {"test/top1": 0.5}}
            )

    monkeypatch.setattr(demo, "cli", lambda argv: calls.append(argv) or Run(argv))
    entry = demo.run_entry("finetune_classification", ["--trainer.limit_val_batches=1.0"])
    fit, test = calls
    assert fit[0] == "fit" and test[0] == "test" and "--ckpt_path=last.ckpt" in test
    assert fit.index("--trainer.limit_val_batches=0") < fit.index("--trainer.limit_val_batches=1.0")
    assert "--trainer.limit_val_batches=0" not in test
    assert entry["top1"] == 0.5 and entry["checkpoint"] == "last.ckpt"
