"""`make demo`: train the recipes on the embedded corpus on CPU, evaluate, print and save the table.

Each entry runs the same CLI a user runs (``fit`` with the recipe config and its tiny CPU overlay, then
``test`` on the held-out shards) and records its figures in outputs/demo/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vfm.cli import main as cli

SUMMARY = Path("outputs/demo/summary.json")
CONFIGS = Path("configs")
# name -> (recipe config, keys reported from the test metrics)
ENTRIES = {
    "post_pretrain": ("post_pretrain.yaml", ("t2v_r1", "v2t_r1", "temporal_acc", "chance_r1")),
}


def run_entry(name: str, extra: list[str]) -> dict:
    recipe, keys = ENTRIES[name]
    root = f"outputs/demo/{name}"
    configs = ["--config", str(CONFIGS / recipe), "--config", str(CONFIGS / "demo" / recipe)]
    start = time.perf_counter()
    fit = cli(["fit", *configs, f"--trainer.default_root_dir={root}", *extra])
    seconds = time.perf_counter() - start
    checkpoint = fit.trainer.checkpoint_callback.last_model_path or fit.trainer.checkpoint_callback.best_model_path
    test = cli(["test", *configs, f"--trainer.default_root_dir={root}", f"--ckpt_path={checkpoint}", *extra])
    metrics = {k.removeprefix("test/"): float(v) for k, v in test.trainer.callback_metrics.items()}
    entry = {key: round(metrics[key], 4) for key in keys if key in metrics}
    entry["train_seconds"] = round(seconds, 1)
    entry["checkpoint"] = checkpoint
    return entry


def write_summary(summary: dict) -> None:
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    tmp = SUMMARY.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, SUMMARY)


def print_table(summary: dict) -> None:
    keys = sorted({k for entry in summary.values() for k in entry if k != "checkpoint"})
    table = Table(title="vfm demo: held-out synthetic clips")
    table.add_column("recipe")
    for key in keys:
        table.add_column(key, justify="right")
    for name, entry in summary.items():
        table.add_row(name, *(f"{entry[k]:.3f}" if isinstance(entry.get(k), float) else "-" for k in keys))
    Console().print(table)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(ENTRIES), default=list(ENTRIES))
    args, extra = parser.parse_known_args(argv)
    summary = json.loads(SUMMARY.read_text()) if SUMMARY.is_file() else {}
    for name in args.only:
        summary[name] = run_entry(name, extra)
        write_summary(summary)  # after each entry, so a later failure loses nothing
    print_table(summary)
    print(f"wrote {SUMMARY}")
    return summary


if __name__ == "__main__":
    main()
