"""Turn a CSV of video-text, video-label or image-text rows plus a media root into webdataset tar shards.

    python -m data_prep.make_shards --csv PATH --videos ROOT --out DIR [--samples-per-shard 256]
        [--workers 2] [--val-fraction 0.0] [--short-side N] [--max-duration SECONDS] [--seed 0]

Rows are assigned to shards before any media is read (per split, in chunks of ``--samples-per-shard`` rows,
shuffled by ``--seed`` within windows of 64 shards), so a shard's content depends only on the CSV and the
options, and the CSV streams through: a 10M-row WebVid CSV is never held in memory. Each shard is
written under a temporary name and renamed when complete, then a small record of what it wrote and skipped
goes to ``OUT/_records/``. A rerun keeps shards that have a record, redoes the others and rebuilds
``stats.json`` and ``skipped.csv`` from the records, so a killed run resumes with every good sample exactly
once. Samples that cannot be used are skipped with a reason code and never stop the run.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import fcntl
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import random
import signal
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from data_prep.probe import Skip, needs_reencode, probe_image, probe_video, read_media, reencode_video

logger = logging.getLogger(__name__)

LAYOUT_VERSION = 1  # bump when the assignment of rows to shards changes
SHUFFLE_WINDOW = 64  # shards' worth of a split's rows shuffled together: shards mix, memory stays bounded
# Accepted headers: name -> columns that must be present. Checked in this order.
FORMATS = {
    "webvid": ("videoid", "page_dir", "name"),
    "image,caption": ("image", "caption"),
    "video,caption": ("video", "caption"),
    "video,label": ("video", "label"),
}
_FORMAT_HELP = "WebVid (videoid, contentUrl, duration, page_dir, name), video,caption, video,label, image,caption"
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
# Fields this script writes; a CSV column of the same name is kept as csv_<name>.
_RESERVED = {"caption", "label", "source", "videoid", "id", "num_frames", "fps", "duration", "width", "height", "codec"}
_SKIPPED_COLUMNS = ("row", "source", "reason", "detail")


class ShardError(Exception):
    """A problem with the inputs or the output folder that the user must fix; nothing was written."""


@dataclass(frozen=True, slots=True)
class Row:
    index: int  # data row number in the CSV, from 0: also the sample's key
    source: str  # media path as written in the CSV (WebVid: page_dir/videoid.mp4)
    kind: str  # "video" or "image"
    text: dict[str, str]  # caption and/or label
    sample_id: tuple[str, str]  # ("videoid" or "id", value)
    split: str
    extra: dict[str, str]  # pass-through columns


@dataclass(frozen=True)
class ShardTask:
    name: str
    split: str
    rows: tuple[Row, ...]
    media_root: str
    out_dir: str
    short_side: int | None
    max_duration: float | None


def detect_format(columns: list[str], csv_path: Path) -> str:
    for name, required in FORMATS.items():
        if set(required) <= set(columns):
            return name
    raise ShardError(
        f"unknown CSV header in {csv_path}: found columns {columns}; accepted formats: "
        f"{_FORMAT_HELP} (other columns pass through)"
    )


def _split_of(record: dict[str, str], sample_id: str, val_fraction: float, index: int) -> str:
    if "split" in record:
        split = _SPLIT_ALIASES.get(record["split"].strip().lower())
        if split is None:
            raise ShardError(
                f"CSV row {index} (from 0, after the header): split {record['split']!r} is not one of train, val, test"
            )
        return split
    # A hash of the id, not the row order, so the same clip lands in the same split whatever the CSV order.
    position = int.from_bytes(hashlib.sha1(sample_id.encode()).digest()[:8], "big") / 2**64
    return "val" if position < val_fraction else "train"


def _row(index: int, record: dict[str, str], csv_format: str, val_fraction: float) -> Row:
    record = {key: value or "" for key, value in record.items() if key is not None}
    if csv_format == "webvid":
        source = f"{record['page_dir']}/{record['videoid']}.mp4"
        text, sample_id = {"caption": record["name"]}, ("videoid", record["videoid"])
        used = {"videoid", "name"}
    else:
        media = "image" if csv_format == "image,caption" else "video"
        source = record[media]
        text = {key: record[key] for key in ("caption", "label") if key in record}
        sample_id = ("id", record.get("id") or record.get("videoid") or source)
        used = {media, *text, "id"}
    extra = {(f"csv_{key}" if key in _RESERVED else key): value for key, value in record.items() if key not in used}
    split = _split_of(record, sample_id[1], val_fraction, index)
    kind = "image" if csv_format == "image,caption" else "video"
    return Row(index, source, kind, text, sample_id, split, extra)


@contextmanager
def _csv_reader(csv_path: Path) -> Iterator[tuple[str, csv.DictReader]]:
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV not found: {csv_path}")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        yield detect_format(reader.fieldnames, csv_path), reader


def iter_rows(csv_path: Path, val_fraction: float) -> Iterator[Row]:
    """The CSV's rows in order, parsed one at a time."""
    with _csv_reader(csv_path) as (csv_format, reader):
        for index, record in enumerate(reader):
            yield _row(index, record, csv_format, val_fraction)


def _window_shards(
    split: str, members: list[Row], first: int, samples_per_shard: int, seed: int
) -> Iterator[tuple[str, str, tuple[Row, ...]]]:
    random.Random(f"{seed}:{split}:{first}").shuffle(members)
    for number, start in enumerate(range(0, len(members), samples_per_shard), start=first):
        yield f"{split}-{number:06d}", split, tuple(members[start : start + samples_per_shard])


def plan_shards(rows: Iterable[Row], samples_per_shard: int, seed: int) -> Iterator[tuple[str, str, tuple[Row, ...]]]:
    """(name, split, rows) for each shard, as the rows stream by."""
    pending: dict[str, list[Row]] = {}
    made: Counter[str] = Counter()
    for row in rows:
        members = pending.setdefault(row.split, [])
        members.append(row)
        if len(members) == samples_per_shard * SHUFFLE_WINDOW:
            yield from _window_shards(row.split, pending.pop(row.split), made[row.split], samples_per_shard, seed)
            made[row.split] += SHUFFLE_WINDOW
    for split in sorted(pending):
        yield from _window_shards(split, pending[split], made[split], samples_per_shard, seed)


def _check_text(row: Row) -> None:
    for field in ("caption", "label"):
        if field in row.text and not row.text[field].strip():
            raise Skip(f"empty_{field}", repr(row.text[field]))


def make_sample(row: Row, task: ShardTask) -> list[tuple[str, bytes]]:
    """Tar members for one row: the media bytes and its JSON. Raises Skip when the row cannot be used."""
    _check_text(row)
    data = read_media(row.source, task.media_root)
    extension = Path(row.source).suffix.lower().lstrip(".") or ("jpg" if row.kind == "image" else "mp4")
    if row.kind == "image":
        info = probe_image(data)
    else:
        info = probe_video(data)
        if needs_reencode(info, task.short_side, task.max_duration):
            data = reencode_video(data, info, task.short_side, task.max_duration)
            info, extension = probe_video(data), "mp4"
    meta = {
        **row.extra,
        **{key: value.strip() for key, value in row.text.items()},
        "source": row.source,
        row.sample_id[0]: row.sample_id[1],
        **info,
    }
    key = f"{row.index:09d}"  # digits only: webdataset splits keys at the first dot
    return [(f"{key}.{extension}", data), (f"{key}.json", json.dumps(meta, ensure_ascii=False).encode())]


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644  # fixed mtime: a redone shard is byte-identical
    tar.addfile(info, io.BytesIO(payload))


def _write_atomic(path: Path, payload: bytes) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_shard(task: ShardTask) -> dict:
    """Write one shard (temporary name, then rename) and then its record; returns the record."""
    out_dir = Path(task.out_dir)
    final = out_dir / f"{task.name}.tar"
    # The pid in the name keeps an orphaned worker of a killed run from renaming a file another run writes.
    temporary = out_dir / f"{task.name}.tar.{os.getpid()}.tmp"
    written, skipped = [], []
    with temporary.open("wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for row in task.rows:
                try:
                    members = make_sample(row, task)
                except Skip as skip:
                    skipped.append(
                        {"row": row.index, "source": row.source, "reason": skip.reason, "detail": skip.detail}
                    )
                    continue
                except Exception as error:  # a bug or an unforeseen file must not stop the whole job
                    logger.exception("row %d (%s) failed", row.index, row.source)
                    skipped.append(
                        {
                            "row": row.index,
                            "source": row.source,
                            "reason": "internal_error",
                            "detail": f"{type(error).__name__}: {error}"[:200],
                        }
                    )
                    continue
                for name, payload in members:
                    _add_member(tar, name, payload)
                written.append(row.index)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    record = {
        "name": task.name,
        "split": task.split,
        "count": len(written),
        "tar_bytes": final.stat().st_size,
        "written": written,
        "skipped": skipped,
    }
    _write_atomic(out_dir / "_records" / f"{task.name}.json", json.dumps(record).encode())
    return record


def _completed(out_dir: Path) -> dict[str, dict]:
    """Records of the shards a previous run finished: the record exists and the tar has the recorded size."""
    records = {}
    for path in (out_dir / "_records").glob("*-*.json"):
        try:
            record = json.loads(path.read_text())
            if (out_dir / f"{record['name']}.tar").stat().st_size == record["tar_bytes"]:
                records[record["name"]] = record
        except (OSError, ValueError, KeyError):
            continue  # unfinished or damaged: the shard is written again
    return records


def _die_with_parent() -> None:
    """Pool initializer: without it the workers of a SIGKILLed run live on as orphans."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG; Linux only
    except (OSError, AttributeError):
        pass


def _run(tasks: Iterator[ShardTask], workers: int) -> Iterator[dict]:
    first = next(tasks, None)
    if first is None:
        return  # nothing left to do: do not start a pool
    tasks = itertools.chain([first], tasks)
    if workers <= 1:
        yield from map(write_shard, tasks)
        return
    # spawn, not fork: the parent may hold threads or FFmpeg state that a forked child must not inherit.
    # imap_unordered pulls tasks lazily through a bounded pipe, so the plan streams here too.
    with multiprocessing.get_context("spawn").Pool(workers, _die_with_parent) as pool:
        yield from pool.imap_unordered(write_shard, tasks)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_layout(out_dir: Path, layout: dict) -> None:
    """Refuse to add to a folder written with other options or another CSV: shards would mix layouts."""
    path = out_dir / "_records" / "layout.json"
    if not path.exists():
        if any(out_dir.glob("*.tar")):
            raise ShardError(
                f"{out_dir} already holds .tar files that make_shards did not write; use an empty --out folder"
            )
        _write_atomic(path, json.dumps(layout, indent=1).encode())
        return
    previous = json.loads(path.read_text())
    changed = [
        f"{key}: {previous.get(key)!r} before, {value!r} now"
        for key, value in layout.items()
        if previous.get(key) != value
    ]
    if changed:
        raise ShardError(
            f"{out_dir} was written by an earlier run with other inputs or options ("
            + "; ".join(changed)
            + "). Rerun with the same options, or use a new --out folder."
        )


@contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    """One run per output folder; the kernel releases the lock if the run is killed."""
    with (out_dir / "_records" / "lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ShardError(f"another make_shards run is writing to {out_dir}") from None
        yield


def _remove_stale(out_dir: Path) -> None:
    for stale in [*out_dir.glob("*.tmp"), *(out_dir / "_records").glob("*.tmp")]:
        stale.unlink(missing_ok=True)


def aggregate(out_dir: Path, records: list[dict]) -> dict:
    """Write stats.json and skipped.csv (atomically) from the shard records."""
    skipped = sorted((entry for record in records for entry in record["skipped"]), key=lambda e: e["row"])
    splits: Counter[str] = Counter()
    for record in records:
        splits[record["split"]] += record["count"]
    stats = {
        "written": sum(record["count"] for record in records),
        "skipped": dict(sorted(Counter(entry["reason"] for entry in skipped).items())),
        "shards": [{"name": f"{r['name']}.tar", "split": r["split"], "count": r["count"]} for r in records],
        "splits": dict(sorted(splits.items())),
    }
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=_SKIPPED_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(skipped)
    _write_atomic(out_dir / "skipped.csv", table.getvalue().encode())
    _write_atomic(out_dir / "stats.json", json.dumps(stats, indent=1).encode())
    return stats


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Callable[[dict], None]]:
    columns = (
        TextColumn("rows"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[written]} written, {task.fields[skipped]} skipped, {task.fields[rate]:.1f} rows/s"),
        TimeElapsedColumn(),
    )
    start, totals = time.monotonic(), Counter()
    with Progress(*columns, console=Console(stderr=True), disable=not enabled) as progress:
        task_id = progress.add_task("rows", total=total, written=0, skipped=0, rate=0.0)

        def update(record: dict) -> None:
            totals.update(written=record["count"], skipped=len(record["skipped"]))
            done = totals["written"] + totals["skipped"]
            rate = done / max(time.monotonic() - start, 1e-6)
            progress.update(task_id, completed=done, rate=rate, **totals)

        yield update


def make_shards(
    csv_path: str | Path,
    media_root: str | Path,
    out_dir: str | Path,
    samples_per_shard: int = 256,
    workers: int = 2,
    val_fraction: float = 0.0,
    short_side: int | None = None,
    max_duration: float | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Write (or finish writing) the shards and return the stats that also go to ``out_dir/stats.json``."""
    csv_path, media_root, out_dir = Path(csv_path), Path(media_root), Path(out_dir)
    if not media_root.is_dir():
        raise FileNotFoundError(f"media root not found (or not a folder): {media_root}")
    if samples_per_shard < 1 or not 0.0 <= val_fraction <= 1.0 or (short_side is not None and short_side < 2):
        raise ShardError("need samples_per_shard >= 1, 0 <= val_fraction <= 1 and short_side >= 2")
    with _csv_reader(csv_path) as (csv_format, reader):  # a wrong header fails here, before anything else
        if val_fraction and "split" in reader.fieldnames:
            logger.warning("the CSV has a split column: --val-fraction %s is ignored", val_fraction)
    num_rows = sum(1 for _ in iter_rows(csv_path, val_fraction))  # every row is checked before any shard
    layout = {
        "version": LAYOUT_VERSION,
        "format": csv_format,
        "rows": num_rows,
        "csv_sha256": _file_digest(csv_path),
        "samples_per_shard": samples_per_shard,
        "val_fraction": val_fraction,
        "short_side": short_side,
        "max_duration": max_duration,
        "seed": seed,
    }
    (out_dir / "_records").mkdir(parents=True, exist_ok=True)
    with _lock(out_dir):
        _check_layout(out_dir, layout)
        _remove_stale(out_dir)
        records = _completed(out_dir)
        logger.info("%d rows (%s), %d shards already done", num_rows, csv_format, len(records))
        plan = plan_shards(iter_rows(csv_path, val_fraction), samples_per_shard, seed)
        tasks = (
            ShardTask(name, split, rows, str(media_root), str(out_dir), short_side, max_duration)
            for name, split, rows in plan
            if name not in records
        )
        with _progress_bar(num_rows, show_progress) as update:
            for record in records.values():
                update(record)
            for record in _run(tasks, workers):
                records[record["name"]] = record
                update(record)
        stats = aggregate(out_dir, [records[name] for name in sorted(records)])
    logger.info("wrote %d samples to %s; skipped %s", stats["written"], out_dir, stats["skipped"] or "none")
    return stats


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser("python -m data_prep.make_shards", description=__doc__.split("\n")[0])
    parser.add_argument("--csv", required=True, type=Path, help=f"rows to shard; formats: {_FORMAT_HELP}")
    parser.add_argument("--videos", required=True, type=Path, help="media root; CSV paths are relative to it")
    parser.add_argument("--out", required=True, type=Path, help="output folder for {split}-{i:06d}.tar")
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="parallel processes, one shard each")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="if the CSV has no split column")
    parser.add_argument("--short-side", type=int, default=None, help="re-encode larger videos to it")
    parser.add_argument("--max-duration", type=float, default=None, help="re-encode longer videos, cut here")
    parser.add_argument("--seed", type=int, default=0, help="order of rows within a split's shards")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        make_shards(
            args.csv,
            args.videos,
            args.out,
            args.samples_per_shard,
            args.workers,
            args.val_fraction,
            args.short_side,
            args.max_duration,
            args.seed,
            show_progress=not args.no_progress,
        )
    except (ShardError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
