import numpy as np
import pytest

from vfm.data.sampling import sample_indices


@pytest.mark.parametrize("num_frames", [1, 5, 8, 100, 1001])
@pytest.mark.parametrize("mode", ["rand", "middle"])
def test_segment_sampling_shape_order_and_coverage(num_frames, mode):
    rng = np.random.default_rng(0)
    indices = sample_indices(num_frames, 8, mode, rng)
    assert len(indices) == 8
    assert indices == sorted(indices)
    assert 0 <= indices[0] and indices[-1] < num_frames
    if num_frames >= 8:  # one frame per segment: all distinct, spread over the whole video
        assert len(set(indices)) == 8
        assert indices[0] < num_frames / 8 and indices[-1] >= num_frames * 7 / 8 - 1


def test_short_video_repeats_frames():
    assert sample_indices(3, 8, "middle") == [0, 0, 0, 1, 1, 2, 2, 2]


def test_middle_is_deterministic_and_rand_varies():
    assert sample_indices(80, 8, "middle") == [5, 15, 25, 35, 45, 55, 65, 75]
    rng = np.random.default_rng(0)
    draws = {tuple(sample_indices(80, 8, "rand", rng)) for _ in range(20)}
    assert len(draws) > 10
    with pytest.raises(ValueError, match="random generator"):
        sample_indices(80, 8, "rand")


def test_rand_is_uniform_within_segments():
    rng = np.random.default_rng(0)
    first = np.array([sample_indices(80, 8, "rand", rng)[0] for _ in range(4000)])
    counts = np.bincount(first, minlength=10)
    assert set(np.nonzero(counts)[0]) == set(range(10))
    assert counts.min() > 300  # 400 expected per frame


def test_fps_sampling_fixed_rate_window():
    # 25 fps video of 60 s, sampled at 1 fps: consecutive indices 25 frames apart.
    indices = sample_indices(1500, 16, "fps", video_fps=25, target_fps=1.0)
    assert np.all(np.diff(indices) == 25)
    assert abs(indices[0] - (1500 - 1 - 15 * 25) / 2) <= 1  # centred without a generator
    rng = np.random.default_rng(0)
    starts = {sample_indices(1500, 16, "fps", rng, video_fps=25, target_fps=1.0)[0] for _ in range(20)}
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= 1500 - 1 - 375


def test_fps_sampling_too_short_video_covers_it_uniformly():
    indices = sample_indices(20, 16, "fps", video_fps=2, target_fps=1.0)  # 10 s video; 16 frames at 1 fps = 15 s
    assert len(indices) == 16 and indices == sorted(indices) and indices[0] <= 1 and indices[-1] >= 18


def test_bad_arguments():
    with pytest.raises(ValueError, match="frame rate"):
        sample_indices(100, 8, "fps")
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_indices(100, 8, "uniform")
    with pytest.raises(ValueError, match="at least one frame"):
        sample_indices(0, 8, "middle")
