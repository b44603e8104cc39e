"""Runs jobs with dependencies as child processes, a few at a time: how `make demo` shares the machine.

On two cores, two entries of the demo side by side with one thread each get through more work than one entry
at a time with two threads: at the demo's sizes the second thread adds only a third (a post-pretraining step:
0.86 s with one thread, 0.62 s with two), and the data workers of an entry then compete with one training
thread instead of stalling two (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping


def run_lanes(
    names: Iterable[str],
    jobs: int,
    depends: Mapping[str, Iterable[str]],
    alone: Iterable[str],
    launch: Callable[[str, int], subprocess.Popen],
    finished: Callable[[str], None],
    cores: int,
    poll_seconds: float = 0.5,
) -> dict[str, str]:
    """Starts each of ``names`` (in that order of preference) once the ones it ``depends`` on have finished, at
    most ``jobs`` at a time; a name in ``alone`` runs with nothing beside it, and nothing starts before it once it
    is ready. ``launch(name, threads)`` starts its process: ``cores`` threads alone, ``cores // jobs`` beside
    others. ``finished(name)`` is called when a process exits with 0. Returns the names that failed or could not
    run (a dependency failed), each with why; the others keep running. Children are stopped on an interrupt."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    pending, alone = list(names), set(alone)
    needs = {name: set(depends.get(name, ())) & set(pending) for name in pending}  # others are done already
    running: dict[str, subprocess.Popen] = {}
    failed: dict[str, str] = {}
    on_term = _raise_on_sigterm()
    try:
        while pending or running:
            _start_ready(pending, running, failed, needs, jobs, alone, launch, max(1, cores // jobs), cores)
            if not running:
                if pending:  # unreachable with acyclic dependencies: say so rather than spin
                    raise RuntimeError(f"cannot start {pending}: their dependencies never finish")
                break
            time.sleep(poll_seconds)
            for name, process in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                if code != 0:
                    failed[name] = f"exit code {code}"
                    continue
                try:
                    finished(name)
                except Exception as error:  # e.g. its result file is missing: count it failed, keep the others
                    failed[name] = f"{type(error).__name__}: {error}"
    finally:
        _stop(running.values())
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)
    return failed


def _raise_on_sigterm():
    """A SIGTERM (a cancelled CI job, `timeout`, `kill`) raises SystemExit here, so the children are stopped too;
    returns the handler it replaced (None where handlers cannot be set: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    return signal.signal(signal.SIGTERM, stop)


def _stop(processes: Iterable[subprocess.Popen], grace_seconds: float = 30.0) -> None:
    """Terminates the processes still running, then kills those that have not exited within ``grace_seconds``."""
    processes = [process for process in processes if process.poll() is None]
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start_ready(pending, running, failed, needs, jobs, alone, launch, shared_threads, cores) -> None:
    for name in list(pending):
        lost = sorted(needs[name] & failed.keys())
        if lost:
            pending.remove(name)
            failed[name] = f"not run: {lost[0]} failed"
            continue
        if needs[name] & (set(pending) | running.keys()):
            continue
        if name in alone:
            if not running:
                pending.remove(name)
                running[name] = launch(name, cores)
            return  # nothing starts beside it, nor ahead of it
        if len(running) >= jobs or running.keys() & alone:
            return
        pending.remove(name)
        running[name] = launch(name, shared_threads)
