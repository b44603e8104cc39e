"""`vfm.bench.loader` measures decoding on one thread, as a data worker runs, and gives the threads back:
`make bench` times the training steps next in the same process."""

import pytest
import torch

from vfm.bench import loader


@pytest.mark.parametrize("fails", [False, True])
def test_loader_bench_restores_the_thread_count(monkeypatch, fails):
    before, seen = torch.get_num_threads(), []

    def measure(repeats, num_frames, size):
        seen.append(torch.get_num_threads())
        if fails:
            raise RuntimeError("decoding failed")
        return {"loader_clips_per_s": 1.0}

    monkeypatch.setattr(loader, "_measure", measure)
    torch.set_num_threads(2)
    try:
        if fails:
            with pytest.raises(RuntimeError):
                loader.run()
        else:
            assert loader.run() == {"loader_clips_per_s": 1.0}
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
