"""outputs/bench/report.json: one file that every benchmark adds its keys to (atomically)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

REPORT = Path("outputs/bench/report.json")


def update_report(entries: dict, path: Path = REPORT) -> dict:
    """Merges ``entries`` into the report, keeping the keys other benchmarks wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update(entries)
    report["machine"] = {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return report
