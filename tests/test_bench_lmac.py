"""benchmarks/bench_lmac.py: the rounds of one configuration merged into one result."""

from pathlib import Path

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
bench_lmac = load_script("_bench_lmac", ROOT / "benchmarks" / "bench_lmac.py")


def _run(impl: str, times: list, rss: float, **extra) -> dict:
    seconds = sorted(times)[len(times) // 2]
    return {
        "impl": impl,
        "stage": "train",
        "batch_size": 2,
        "seconds_per_batch": seconds,
        "clips_per_s": 2 / seconds,
        "all_times": times,
        "peak_rss_gb": rss,
        **extra,
    }


def test_rounds_merge_into_the_median_of_every_batch_and_the_largest_peak():
    runs = [
        _run("ours", [5.0, 5.2, 5.1], 4.5, flops_per_clip=1e12, tflops_per_s=0.2),
        _run("published", [8.0, 8.4, 8.2], 6.0),
        _run("published", [9.0, 9.2, 9.4], 6.2),  # second round, reverse order, slower machine
        _run("ours", [5.6, 5.8, 5.7], 4.4),
    ]
    merged = {r["impl"]: r for r in bench_lmac._merge_rounds(runs, peak_tflops=2.0)}
    ours, published = merged["ours"], merged["published"]
    assert ours["rounds"] == published["rounds"] == 2
    assert ours["round_seconds"] == [5.1, 5.7]
    assert sorted(ours["all_times"]) == [5.0, 5.1, 5.2, 5.6, 5.7, 5.8]
    assert ours["seconds_per_batch"] == 5.6  # the upper median of the six batches
    assert published["seconds_per_batch"] == 9.0
    assert ours["peak_rss_gb"] == 4.5 and published["peak_rss_gb"] == 6.2
    assert ours["clips_per_s"] == 2 / 5.6
    # the FLOP rate follows the merged time; the peak fraction with it
    assert abs(ours["tflops_per_s"] - 2e12 / 5.6 / 1e12) < 1e-12
    assert abs(ours["fraction_of_peak"] - ours["tflops_per_s"] / 2.0) < 1e-12
    assert "tflops_per_s" not in published


def test_one_round_is_the_run_itself():
    run = _run("ours", [5.0, 5.2, 5.1], 4.5)
    (merged,) = bench_lmac._merge_rounds([run])
    assert merged["seconds_per_batch"] == 5.1 and merged["rounds"] == 1
    assert merged["all_times"] == [5.0, 5.2, 5.1]
