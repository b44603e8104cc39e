"""Benchmarks behind `make bench`: each writes its figures into outputs/bench/report.json."""
