"""`python -m data_prep.summarize DIR`: one stats.json for a folder of shard sets (clips/, long/, images/)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def summarize(root: str | Path) -> dict:
    """Collects every ``*/stats.json`` under ``root`` into ``root/stats.json`` (written atomically)."""
    root = Path(root)
    subsets = {}
    for stats_path in sorted(root.glob("*/stats.json")):
        stats = json.loads(stats_path.read_text())
        subsets[stats_path.parent.name] = {
            "written": stats["written"],
            "skipped": stats["skipped"],
            "splits": stats.get("splits", {}),
            "shards": len(stats["shards"]),
        }
    if not subsets:
        raise FileNotFoundError(f"no */stats.json under {root}: run make_shards first")
    summary = {
        "written": sum(s["written"] for s in subsets.values()),
        "skipped": sum(sum(s["skipped"].values()) for s in subsets.values()),
        "subsets": subsets,
    }
    tmp = root / "stats.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, root / "stats.json")
    return summary


if __name__ == "__main__":
    print(json.dumps(summarize(sys.argv[1]), indent=2))
