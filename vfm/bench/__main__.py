"""`python -m vfm.bench [--only loader]`: runs the benchmarks and merges their figures into the report."""

from __future__ import annotations

import argparse
import json

from vfm.bench.report import REPORT, update_report

BENCHMARKS = ("loader", "model_step", "long_video", "recipe_mfu")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    report = {}
    for name in args.only:
        if name == "loader":
            from vfm.bench.loader import run

            entries = run()
        elif name == "model_step":
            from vfm.bench.model_step import run

            entries = run()
        elif name == "long_video":
            from vfm.bench.long_video import run

            entries = run()
        elif name == "recipe_mfu":
            from vfm.bench.recipe_mfu import run

            entries = run()
        report = update_report(entries)
        print(json.dumps(entries, indent=2))
    print(f"wrote {REPORT}")
    return report


if __name__ == "__main__":
    main()
