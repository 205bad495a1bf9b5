"""benchmarks/perf_table.py on bench_lmac.py JSON: which run each row is (huge pages or not,
YAML overrides) and which re-implementation the speed-ups are against."""

import json
from pathlib import Path

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
perf_table = load_script("_perf_table", ROOT / "benchmarks" / "perf_table.py")


def _result(impl: str, seconds: float, huge_pages: bool) -> dict:
    return {
        "impl": impl,
        "stage": "train",
        "precision": "fp32",
        "batch_size": 2,
        "seconds_per_batch": seconds,
        "clips_per_s": 2 / seconds,
        "peak_rss_gb": 5.0,
        "huge_pages": huge_pages,
    }


def _write(path: Path, results: list, overrides: str = "{}") -> None:
    config = {"batch_size": 2, "ours_overrides": overrides}
    path.write_text(json.dumps({"config": config, "results": results}))


def test_speedups_are_against_the_reimplementation_in_the_same_environment(tmp_path):
    # both on huge pages in one run; the re-implementation also as it ships, in another
    _write(tmp_path / "a.json", [_result("ours", 5.0, True), _result("published", 7.5, True)])
    _write(tmp_path / "b.json", [_result("published", 9.0, False)])
    _write(tmp_path / "c.json", [_result("ours", 6.0, False)], '{"optimizer_in_backward": true}')
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ")
        for line in perf_table.table(tmp_path).splitlines()[2:]
    }
    assert set(rows) == {
        "L-MAC train (ours)",
        "L-MAC train (published re-impl., huge pages)",
        "L-MAC train (published re-impl.)",
        "L-MAC train (ours, optimizer_in_backward: True, no huge pages)",
    }
    # speed-up: same run; vs fp32 re-impl.: the re-implementation on huge pages (7.5 s)
    assert rows["L-MAC train (ours)"][-2:] == ["1.50x", "1.50x |"]
    assert rows["L-MAC train (ours, optimizer_in_backward: True, no huge pages)"][-2:] == [
        "",
        "1.25x |",
    ]
    assert rows["L-MAC train (published re-impl.)"][-2:] == ["", " |"]


def test_labels_say_whether_freed_memory_is_kept_or_returned():
    """The mmap threshold in a run's JSON: the package's 1 GiB keeps freed memory (no label
    for ours, how it ships), 0 is glibc's default, a small fixed one returns every larger
    block at once (the smallest-peak setting)."""
    label = perf_table.label
    assert label("ours", {}, True, 1 << 30) == "ours"
    assert label("ours", {}, True, 0) == "ours, freed memory returned"
    assert label("ours", {}, True, 131072) == (
        "ours, freed memory returned at once (128 KiB threshold)"
    )
    assert (
        label("published", {}, True, 1 << 30) == "published re-impl., huge pages, freed memory kept"
    )
    assert label("published", {}, False, 131072) == "published re-impl."
