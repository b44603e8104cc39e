"""The attention micro-benchmark times both SDPA CPU backends on the same inputs, which agree."""

from vfm.bench.attention import run


def test_attention_bench_reports_both_backends_with_matching_gradients():
    report = run(batch=1, heads=2, tokens=33, head_dim=16, dtype="float32", repeats=1)
    for backend in ("flash", "math"):
        assert report[backend]["forward_backward_s"] >= report[backend]["forward_s"] > 0
    assert report["shape"] == [1, 2, 33, 16]
    assert report["max_relative_grad_difference"] < 1e-4
