"""`make demo`: train the recipes on the embedded corpus on CPU, evaluate, print and save the table.

Each entry runs the same CLI a user runs (``fit`` with the recipe config and its tiny CPU overlay, then
``test`` on the held-out shards) and records its figures in outputs/demo/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from vfm.cli import main as cli
from vfm.demo_lanes import run_lanes
from vfm.eval import linear_probe

SUMMARY = Path("outputs/demo/summary.json")
# every entry is tested on the held-out shards right after its fit: validating the same shards during the fit
# would only repeat that work (``python -m vfm.demo --trainer.limit_val_batches=1.0`` brings it back)
# (``last.ckpt`` is then written at the end of each training epoch rather than after a validation)
NO_VALIDATION = ["--trainer.limit_val_batches=0", "--checkpoint.save_on_train_epoch_end=true"]
CONFIGS = Path("configs")
UMT_KEYS = ("t2v_r1", "v2t_r1", "temporal_acc", "chance_r1", "t2v_r1_reranked", "v2t_r1_reranked")
LONG_VIDEO_KEYS = ("t2v_r1", "v2t_r1", "temporal_acc", "temporal_text_acc", "temporal_video_acc", "chance_r1")
# name -> (recipe config, keys reported from the test metrics); the overlay is configs/demo/<recipe config>
ENTRIES = {
    "post_pretrain": ("post_pretrain.yaml", ("t2v_r1", "v2t_r1", "temporal_acc", "chance_r1")),
    "long_video": ("long_video_long.yaml", LONG_VIDEO_KEYS),
    "long_video_frame": ("long_video_long.yaml", LONG_VIDEO_KEYS),
    "finetune_classification": ("finetune_classification.yaml", ("top1", "top5", "chance_top1", "majority_top1")),
    "umt": ("umt.yaml", ("alignment",)),
    "umt_multimodal": ("umt_multimodal.yaml", UMT_KEYS),
    "umt_no_teacher": ("umt_multimodal.yaml", UMT_KEYS),
}
# name -> the entry whose checkpoint it starts from (``--model.init_from``, read from the summary)
INIT_FROM = {
    "long_video": "post_pretrain",
    "long_video_frame": "post_pretrain",
    "finetune_classification": "post_pretrain",
    "umt_multimodal": "umt",
}
# name -> the entry whose checkpoint is its frozen teacher (``--model.teacher``): the post-pretrained model teaches
TEACHER_FROM = {"umt": "post_pretrain", "umt_multimodal": "post_pretrain"}
# name -> {prefix: (whose encoder, overrides)} of linear probes (configs/linear_probe.yaml, features extracted
# once: vfm.eval.linear_probe): "self" probes the entry's own checkpoint, "init" the checkpoint it starts from.
# The UMT probes read the token map on an 8 x 4 x 4 grid (a mean-pooled vector of a CLS-free student drops where
# things move); the fine-tune's probe reads the post-pretrained encoder it starts from.
GRID_PROBE = ["--model.features=grid", "--model.grid_size=[8, 4]"]
PROBES = {
    "finetune_classification": {"linear_probe": ("init", [])},
    "umt": {
        "probe": ("self", ["--data.label_key=motion", *GRID_PROBE]),
        "probe_shape": ("self", ["--data.label_key=shape", *GRID_PROBE]),
    },
}
PROBE_KEYS = ("top1", "top5", "chance_top1", "majority_top1", "train_seconds")
# the BERT vocabulary of the UMT stage-2 entries (configs/demo/umt_multimodal.yaml), trained on the corpus
WORDPIECE = Path("data/tokenizers/synthetic-wordpiece")
WORDPIECE_SHARDS = ["data/shards/synthetic/clips/train-*.tar", "data/shards/synthetic/images/train-*.tar"]
# name -> command-line overrides on top of its two configs (variants of one recipe)
# umt_no_teacher: the umt_multimodal student and data, no teacher, as many steps as umt + umt_multimodal
# (80 stage-1 steps + 240 stage-2 steps = 320 steps: 5120 video samples, each batch followed by an image batch)
ENTRY_ARGS = {
    "long_video_frame": ["--model.attention=frame"],
    "umt_no_teacher": ["--model.teacher=null", "--model.mask_mode=per_frame", "--data.samples_per_epoch=5120"],
}


def entry_dir(name: str) -> Path:
    """Where an entry's runs, its log and its result (side by side) go: ``outputs/demo/<name>``."""
    return Path("outputs/demo", name)


def run_entry(name: str, extra: list[str]) -> dict:
    recipe, keys = ENTRIES[name]
    root = entry_dir(name)
    configs = ["--config", str(CONFIGS / recipe), "--config", str(CONFIGS / "demo" / recipe)]
    start = time.perf_counter()
    fit = cli(["fit", *configs, f"--trainer.default_root_dir={root}", *NO_VALIDATION, *extra])
    seconds = time.perf_counter() - start
    checkpoint = fit.trainer.checkpoint_callback.last_model_path or fit.trainer.checkpoint_callback.best_model_path
    test = cli(["test", *configs, f"--trainer.default_root_dir={root}", f"--ckpt_path={checkpoint}", *extra])
    metrics = {k.removeprefix("test/"): float(v) for k, v in test.trainer.callback_metrics.items()}
    entry = {key: round(metrics[key], 4) for key in keys if key in metrics}
    entry["train_seconds"] = round(seconds, 1)
    entry["checkpoint"] = checkpoint
    return entry


def entry_args(name: str, summary: dict) -> list[str]:
    """An entry's own overrides, and ``--model.init_from`` the checkpoint of the entry it starts from."""
    args = list(ENTRY_ARGS.get(name, []))
    source = INIT_FROM.get(name)
    if source is not None:
        args.append(f"--model.init_from={_checkpoint_of(source, name, summary)}")
    if name in TEACHER_FROM:
        args.append(f"--model.teacher={_checkpoint_of(TEACHER_FROM[name], name, summary)}")
    return args


def _checkpoint_of(source: str, name: str, summary: dict) -> str:
    checkpoint = summary.get(source, {}).get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise SystemExit(
            f"demo entry {name!r} needs the {source!r} checkpoint, which {SUMMARY} does not name: "
            f"run `python -m vfm.demo --only {source} {name}`"
        )
    return checkpoint


def run_probe(prefix: str, checkpoint: str, extra: list[str]) -> dict:
    """A linear probe of a checkpoint's encoder on features extracted once: ``{prefix}_top1`` and the rest."""
    configs = ["--config", str(CONFIGS / "linear_probe.yaml"), "--config", str(CONFIGS / "demo" / "linear_probe.yaml")]
    result = linear_probe.run([*configs, f"--model.init_from={checkpoint}", *extra])
    return {f"{prefix}_{key}": round(float(result[key]), 1 if key.endswith("seconds") else 4) for key in PROBE_KEYS}


def probe_chance(entry: dict) -> dict:
    """``chance_top1`` of an entry reported by its first probe (``probe_top1`` beside it)."""
    return {"chance_top1": entry["probe_chance_top1"]} if "probe_chance_top1" in entry else {}


def prepare(name: str) -> None:
    """Entry inputs made on first use: the BERT vocabulary of the UMT stage-2 entries."""
    if ENTRIES[name][0] == "umt_multimodal.yaml" and not (WORDPIECE / "tokenizer.json").is_file():
        from data_prep.wordpiece import shard_captions, train_wordpiece

        train_wordpiece(shard_captions(WORDPIECE_SHARDS), WORDPIECE, vocab_size=512)


def read_summary() -> dict:
    return json.loads(SUMMARY.read_text()) if SUMMARY.is_file() else {}


def write_summary(summary: dict) -> None:
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    tmp = SUMMARY.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, SUMMARY)


# the figures the printed table shows, in this order (summary.json keeps every key)
TABLE_KEYS = (
    "t2v_r1", "v2t_r1", "t2v_r1_reranked", "temporal_acc", "chance_r1", "top1", "linear_probe_top1",
    "probe_top1", "probe_shape_top1", "chance_top1", "alignment",
)  # fmt: skip


def print_table(summary: dict, console: Console | None = None, wall_seconds: float | None = None) -> None:
    """One row per entry: its headline figures in one wrapped cell, so the table fits a terminal; then a row
    adding up the minutes of every entry in the summary (also those kept from earlier runs; entries that ran side
    by side count each) and, given ``wall_seconds``, one with this run's wall-clock minutes."""
    table = Table(title="vfm demo: held-out synthetic clips", show_lines=True)
    table.add_column("entry", no_wrap=True)
    table.add_column("figures")
    table.add_column("min", justify="right", no_wrap=True)
    for name, entry in summary.items():
        figures = "  ".join(f"{key} {entry[key]:.4f}" for key in TABLE_KEYS if isinstance(entry.get(key), float))
        minutes = f"{entry['seconds'] / 60:.1f}" if "seconds" in entry else "-"
        table.add_row(name, figures, minutes)
    if summary and all("seconds" in entry for entry in summary.values()):
        table.add_row("all entries", "", f"{sum(entry['seconds'] for entry in summary.values()) / 60:.1f}")
    if wall_seconds is not None:
        table.add_row("this run, wall clock", "", f"{wall_seconds / 60:.1f}")
    (console or Console()).print(table)


def merge_entry(summary: dict, name: str, entry: dict) -> dict:
    """The summary with ``entry`` under ``name``, entries in ``ENTRIES`` order (others after), written at once."""
    summary = {**summary, name: entry}
    order = {key: i for i, key in enumerate(ENTRIES)}
    summary = dict(sorted(summary.items(), key=lambda item: order.get(item[0], len(order))))
    write_summary(summary)  # after each entry, so a later failure loses nothing
    return summary


def run_entries(names: list[str], extra: list[str], result: Path | None = None) -> dict:
    """Runs ``names`` one after the other in this process; each entry's figures go to the summary when it ends
    (or, for a child of `run_parallel`, to ``result``, which the parent merges)."""
    summary = read_summary()
    for name in names:
        start = time.perf_counter()
        prepare(name)
        entry = run_entry(name, [*entry_args(name, summary), *extra])
        for prefix, (source, probe_args) in PROBES.get(name, {}).items():
            encoder = entry["checkpoint"] if source == "self" else summary[INIT_FROM[name]]["checkpoint"]
            entry |= run_probe(prefix, encoder, [*probe_args, *extra])
        entry |= probe_chance(entry)
        entry["threads"] = torch.get_num_threads()
        entry["seconds"] = round(time.perf_counter() - start, 1)  # all of it: inputs, fit, tests, probes
        if result is not None:
            result.write_text(json.dumps(entry))
            summary = {**summary, name: entry}
        else:
            summary = merge_entry(summary, name, entry)
    return summary


# the order entries start in when several run at once (longest chains first); post_pretrain has both cores
SCHEDULE = (
    "post_pretrain", "umt", "umt_no_teacher", "umt_multimodal", "finetune_classification", "long_video",
    "long_video_frame",
)  # fmt: skip
ALONE = {"post_pretrain"}  # its target is on the whole machine (at most 8 minutes on 2 cores)


def run_parallel(names: list[str], jobs: int, extra: list[str]) -> tuple[dict, dict[str, str]]:
    """Runs ``names`` as child processes (``python -m vfm.demo --only NAME``), ``jobs`` at a time, each once the
    entries it starts from are done, its output in ``outputs/demo/NAME/demo.log``; merges each into the summary
    as it ends. Returns the summary and the entries that failed (with why)."""
    summary = read_summary()
    depends = {name: {INIT_FROM.get(name), TEACHER_FROM.get(name)} - {None} for name in names}
    for name in names:  # a source outside this run must be in the summary already: say so before anything runs
        for source in depends[name] - set(names):
            _checkpoint_of(source, name, summary)
    for name in names:  # inputs shared by entries (the stage-2 vocabulary) are made once, before any child starts
        prepare(name)
    started: dict[str, float] = {}
    state = {"summary": summary}

    def result(name: str) -> Path:
        return entry_dir(name) / "demo_result.json"

    def log(name: str) -> Path:
        return entry_dir(name) / "demo.log"

    def launch(name: str, threads: int) -> subprocess.Popen:
        entry_dir(name).mkdir(parents=True, exist_ok=True)
        result(name).unlink(missing_ok=True)
        command = [sys.executable, "-m", "vfm.demo", "--jobs", "1", "--result", str(result(name))]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with open(log(name), "w") as output:
            process = subprocess.Popen([*command, *extra, "--only", name], stdout=output, stderr=output, env=env)
        started[name] = time.perf_counter()
        print(f"{name}: started, {threads} thread(s), log {log(name)}", flush=True)
        return process

    def finished(name: str) -> None:
        entry = json.loads(result(name).read_text())
        state["summary"] = merge_entry(state["summary"], name, entry)
        print(f"{name}: done in {(time.perf_counter() - started[name]) / 60:.1f} min", flush=True)

    failed = run_lanes(names, jobs, depends, ALONE, launch, finished, cores=usable_cores())
    for name, why in failed.items():
        if name not in started:  # skipped: its log, if any, is an earlier run's
            print(f"{name}: {why}", file=sys.stderr)
            continue
        tail = log(name).read_text(errors="replace").splitlines()[-15:] if log(name).is_file() else []
        print(f"{name} failed ({why}); the end of {log(name)}:", *tail, sep="\n", file=sys.stderr)
    return state["summary"], failed


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity, e.g. a container's share), not every CPU of the host."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def scheduled(names: list[str]) -> list[str]:
    """``names`` once each, in ``SCHEDULE`` order: every entry after the ones it starts from."""
    names = list(dict.fromkeys(names))
    return [name for name in SCHEDULE if name in names] + [name for name in names if name not in SCHEDULE]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(ENTRIES), default=list(ENTRIES))
    parser.add_argument(
        "--jobs", type=int, default=min(2, usable_cores()),
        help="entries run at once, each in its own process with cores / jobs threads (post_pretrain alone)",
    )  # fmt: skip
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)  # a child of run_parallel writes here
    args, extra = parser.parse_known_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    args.only = scheduled(args.only)
    start = time.perf_counter()
    if args.jobs > 1 and len(args.only) > 1:
        summary, failed = run_parallel(args.only, args.jobs, extra)
    else:
        summary, failed = run_entries(args.only, extra, args.result), {}
    if args.result is not None:
        return summary
    wall = time.perf_counter() - start
    run = {"wall_seconds": round(wall, 1), "jobs": args.jobs, "entries": args.only, "failed": failed}
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.with_name("run.json").write_text(json.dumps(run, indent=2))  # this run's wall clock, beside the figures
    print_table(summary, wall_seconds=wall)
    done = len(args.only) - len(failed)
    print(f"wrote {SUMMARY}: {done} entries in {wall / 60:.1f} min (wall clock, {args.jobs} at a time)")
    if failed:
        raise SystemExit("demo entries failed: " + "; ".join(f"{name}: {why}" for name, why in failed.items()))
    return summary


if __name__ == "__main__":
    main()
