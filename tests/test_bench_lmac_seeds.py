"""benchmarks/bench_lmac_seeds.py: variants parsed with a clear error, runs after the first
share its data and CNN14, and the summary table's means, ranges and target counts."""

import argparse
import json
from pathlib import Path

import pytest
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
seeds = load_script("_bench_lmac_seeds", ROOT / "benchmarks" / "bench_lmac_seeds.py")


def _metrics(share: float, ff: float, swap_ff: float) -> dict:
    keys = ("SPS", "fid_in", "loc_precision", "loc_iou", "loc_time_corr", "random_FF")
    m = dict.fromkeys(keys, 0.9)
    m.update(random_fid_in=0.5, random_loc_precision=0.02, random_loc_iou=0.02)
    m.update(mask_input_dependence=share, FF=ff, swap_FF=swap_ff, random_FF=0.0)
    return m


def test_variants_are_name_equals_arguments():
    assert seeds.parse_variant("bounded=--out_loss bounded") == ("bounded", "--out_loss bounded")
    assert seeds.parse_variant("published=") == ("published", "")
    for bad in ("bounded", "=--seed 2", "a/b=--seed 2"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=TRAIN_LMAC_ARGS"):
            seeds.parse_variant(bad)


def test_later_runs_share_the_first_runs_data_and_classifier(tmp_path, monkeypatch):
    calls = []

    def fake_quality(argv):
        out = Path(argv[0])
        calls.append(argv)
        for name in seeds.SHARED:  # the first run makes them; the others see them as links
            (out / name).mkdir(exist_ok=True)
        for setting in ("clean", "mixtures"):
            (out / "lmac_eval" / setting).mkdir(parents=True, exist_ok=True)
            (out / "lmac_eval" / setting / "test_metrics.json").write_text(
                json.dumps(_metrics(0.6, 0.9, 0.2))
            )

    monkeypatch.setattr(seeds.quality, "main", fake_quality)
    report = seeds.main([str(tmp_path), "--seeds", "1", "2", "--variant", "b=--out_loss bounded"])
    assert [c[0] for c in calls] == [str(tmp_path / "b_seed1"), str(tmp_path / "b_seed2")]
    assert calls[1][-1].endswith("--seed 2 --out_loss bounded")
    assert (tmp_path / "b_seed2" / "synth10").is_symlink()
    assert (tmp_path / "b_seed2" / "synth10").resolve() == (tmp_path / "b_seed1" / "synth10")
    assert not (tmp_path / "b_seed1" / "synth10").is_symlink()
    assert set(report["runs"]["b"]) == {"1", "2"}
    assert (tmp_path / "seeds.md").read_text().startswith("Seeds 1, 2;")


def test_table_gives_mean_range_and_the_seeds_meeting_each_target():
    runs = {
        "published": {
            1: {"clean": _metrics(0.3, 0.9, 0.8), "mixtures": _metrics(0.3, 0.9, 0.8)},
            2: {"clean": _metrics(0.6, 0.9, 0.2), "mixtures": _metrics(0.6, 0.9, 0.2)},
        },
    }
    text = seeds.tables(runs, [1, 2])
    row = next(line for line in text.splitlines() if line.startswith("| published | 0.450"))
    assert "0.450 (0.300 to 0.600)" in row and "0.500 (0.200 to 0.800)" in row
    counts = [line for line in text.splitlines() if line.startswith("| published | 1 / 2")]
    assert len(counts) == 2  # clean and mixtures: share and FF met by seed 2 only
    assert counts[0].split(" | ")[1:3] == ["1 / 2", "1 / 2"]
