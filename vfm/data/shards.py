"""Shard lists: expand globs and brace patterns, count samples per shard, split work across readers."""

from __future__ import annotations

import glob
import json
import os
import tarfile
from functools import lru_cache
from pathlib import Path

from braceexpand import braceexpand

_GLOB_CHARS = set("*?[")


def expand_urls(spec: str | list[str]) -> list[str]:
    """Shard paths from a glob, a brace pattern (``train-{000000..000009}.tar``), or a list of either.

    Local paths must exist; URLs with a scheme (``pipe:``, ``s3://``...) are passed to webdataset as they are.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in items:
        for pattern in braceexpand(str(item)):
            if "://" in pattern or pattern.startswith("pipe:"):
                urls.append(pattern)
            elif _GLOB_CHARS & set(pattern):
                matches = sorted(glob.glob(os.path.expanduser(pattern)))
                if not matches:
                    raise FileNotFoundError(f"no shards match {pattern!r} (run `make shards` to build them)")
                urls.extend(matches)
            elif Path(pattern).expanduser().is_file():
                urls.append(str(Path(pattern).expanduser()))
            else:
                raise FileNotFoundError(f"shard {pattern!r} does not exist (from {item!r})")
    if not urls:
        raise ValueError(f"no shards in {spec!r}")
    return urls


@lru_cache(maxsize=64)
def _stats_counts(directory: str) -> dict[str, int]:
    stats = Path(directory) / "stats.json"
    if not stats.is_file():
        return {}
    shards = json.loads(stats.read_text()).get("shards", [])
    return {entry["name"]: int(entry["count"]) for entry in shards}


def count_samples(url: str) -> int:
    """Samples in a shard: from the ``stats.json`` written beside it by make_shards, else by reading its headers."""
    path = Path(url)
    counts = _stats_counts(str(path.parent.resolve()))
    if path.name in counts:
        return counts[path.name]
    if "://" in url or url.startswith("pipe:"):
        raise ValueError(f"cannot count the samples of remote shard {url!r}: put a stats.json beside it")
    keys = set()
    with tarfile.open(url) as tar:
        for member in tar:
            if member.isfile():
                keys.add(_sample_key(member.name))
    return len(keys)


def _sample_key(name: str) -> str:
    """webdataset's grouping key: the path up to the first dot of the file name."""
    directory, _, base = name.rpartition("/")
    return f"{directory}/{base.split('.', 1)[0]}" if directory else base.split(".", 1)[0]


def split_range(total: int, parts: int, part: int) -> tuple[int, int]:
    """[start, stop) of ``part`` when ``total`` items are split into ``parts`` contiguous, balanced ranges."""
    return total * part // parts, total * (part + 1) // parts
