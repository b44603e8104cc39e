"""`vfm.demo` bookkeeping: entries chain through the summary, each records its wall time, nothing is lost."""

import json

import pytest

from vfm import demo


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "SUMMARY", tmp_path / "summary.json")
    monkeypatch.setattr(demo, "prepare", lambda name: None)
    calls = []

    def run_entry(name, extra, variant=None):
        calls.append((name, variant, extra))
        checkpoint = tmp_path / f"{name}.ckpt"
        checkpoint.write_text("weights")
        return {"top1": 0.5, "train_seconds": 1.0, "checkpoint": str(checkpoint)}

    def run_probe(name, prefix, checkpoint, extra):
        return {f"{prefix}_top1": 0.4, f"{prefix}_chance_top1": 0.1}

    monkeypatch.setattr(demo, "run_entry", run_entry)
    monkeypatch.setattr(demo, "run_probe", run_probe)
    return calls


def test_entries_start_from_the_checkpoints_named_in_the_summary(fake_runs, tmp_path):
    summary = demo.main(["--only", "post_pretrain", "finetune_classification", "umt"])
    finetune = [extra for name, variant, extra in fake_runs if name == "finetune_classification"]
    assert all(f"--model.init_from={tmp_path / 'post_pretrain.ckpt'}" in extra for extra in finetune)
    assert len(finetune) == 2  # the fine-tune and its linear-probe variant
    assert summary["finetune_classification"]["linear_probe_top1"] == 0.5
    # the UMT entry reports its probe's chance level as chance_top1 beside probe_top1
    assert summary["umt"]["probe_top1"] == 0.4 and summary["umt"]["chance_top1"] == 0.1
    umt_args = [arg for name, _, extra in fake_runs if name == "umt" for arg in extra]
    assert f"--model.teacher={tmp_path / 'post_pretrain.ckpt'}" in umt_args
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert all(saved[name]["seconds"] >= 0 for name in ("post_pretrain", "finetune_classification", "umt"))


def test_an_entry_without_its_source_checkpoint_stops_with_the_command_to_run(fake_runs, tmp_path):
    with pytest.raises(SystemExit, match="--only post_pretrain finetune_classification"):
        demo.main(["--only", "finetune_classification"])
    assert not (tmp_path / "summary.json").exists()


def test_table_lists_every_entry_and_the_total_minutes(capsys):
    demo.print_table({"a": {"t2v_r1": 0.0703, "seconds": 60.0}, "b": {"top1": 0.5, "seconds": 120.0}})
    out = capsys.readouterr().out
    assert "t2v_r1 0.0703" in out and "top1 0.5000" in out
    assert "3.0" in out.splitlines()[-2]  # the "all" row: 180 s
