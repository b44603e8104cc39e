"""`vfm.demo_lanes.run_lanes`: real child processes, started in dependency order, a few at a time."""

import subprocess
import sys
import time

import pytest

from vfm.demo_lanes import run_lanes


class Recorder:
    """Starts `python -c` children that sleep (and exit with a given code); records when each ran."""

    def __init__(self, codes=None, seconds=0.3):
        self.codes, self.seconds = codes or {}, seconds
        self.threads, self.start, self.end = {}, {}, {}

    def launch(self, name, threads):
        self.threads[name], self.start[name] = threads, time.perf_counter()
        code = f"import time, sys; time.sleep({self.seconds}); sys.exit({self.codes.get(name, 0)})"
        return subprocess.Popen([sys.executable, "-c", code])

    def finished(self, name):
        self.end[name] = time.perf_counter()

    def overlap(self, a, b):
        return self.start[a] < self.end[b] and self.start[b] < self.end[a]


def test_dependencies_first_at_most_jobs_at_once_and_alone_means_alone():
    runs = Recorder()
    depends = {"b": ["a"], "c": ["a"], "d": ["b"], "e": []}
    failed = run_lanes("aebcd", 2, depends, {"a"}, runs.launch, runs.finished, cores=4, poll_seconds=0.02)
    assert failed == {} and set(runs.end) == set("abcde")
    assert runs.threads == {"a": 4, "b": 2, "c": 2, "d": 2, "e": 2}  # all cores alone, half each beside another
    # "a" runs alone: "e" needs nothing, yet waits, since "a" comes first and nothing starts ahead of it
    assert not any(runs.overlap("a", other) for other in "bcde")
    assert runs.start["b"] >= runs.end["a"] and runs.start["d"] >= runs.end["b"]
    for moment in runs.start.values():  # never more than two at once
        assert sum(runs.start[n] <= moment < runs.end[n] for n in runs.start) <= 2
    assert runs.overlap("e", "b") or runs.overlap("e", "c")  # the lanes are used side by side


def test_a_failure_skips_what_depends_on_it_and_the_rest_still_run():
    runs = Recorder(codes={"b": 3}, seconds=0.05)
    depends = {"c": ["b"], "d": ["c"], "e": ["a"]}
    failed = run_lanes("abcde", 2, depends, set(), runs.launch, runs.finished, cores=2, poll_seconds=0.02)
    assert failed == {"b": "exit code 3", "c": "not run: b failed", "d": "not run: c failed"}
    assert set(runs.end) == {"a", "e"} and set(runs.start) == {"a", "b", "e"}


def test_an_error_in_the_parent_stops_the_children():
    runs = Recorder(seconds=0.05)
    slow = {}

    def launch(name, threads):
        if name == "slow":
            slow["process"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            return slow["process"]
        return runs.launch(name, threads)

    def finished(name):
        raise KeyboardInterrupt

    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_lanes(["slow", "quick"], 2, {}, set(), launch, finished, cores=2, poll_seconds=0.02)
    assert slow["process"].poll() is not None and time.perf_counter() - start < 30


def test_a_result_that_cannot_be_merged_counts_as_failed():
    runs = Recorder(seconds=0.01)

    def finished(name):
        if name == "a":
            raise FileNotFoundError("outputs/demo/a/demo_result.json")

    failed = run_lanes("ab", 2, {"b": ["a"]}, set(), runs.launch, finished, cores=2, poll_seconds=0.02)
    assert failed == {"a": "FileNotFoundError: outputs/demo/a/demo_result.json", "b": "not run: a failed"}


def test_jobs_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        run_lanes("a", 0, {}, set(), None, None, cores=2)


def test_children_that_ignore_terminate_are_killed_after_the_grace_period():
    from vfm.demo_lanes import _stop

    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    stubborn = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    stubborn.stdout.readline()  # its handler is set
    start = time.perf_counter()
    _stop([stubborn], grace_seconds=0.5)
    assert stubborn.poll() is not None and time.perf_counter() - start < 30


def test_sigterm_to_the_parent_stops_the_children_and_restores_the_handler():
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    slow = {}

    def launch(name, threads):
        seconds = 60 if name == "slow" else 0.01
        slow[name] = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
        return slow[name]

    def finished(name):  # a `kill` of the parent while "slow" still runs
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(SystemExit, match="signal"):
        run_lanes(["slow", "quick"], 2, {}, set(), launch, finished, cores=2, poll_seconds=0.02)
    assert slow["slow"].poll() is not None and signal.getsignal(signal.SIGTERM) == before
