#!/usr/bin/env python3
"""Print the metrics of an evaluation folder as a Markdown table (the tables in README.md).

Reads ``<folder>/<setting>/test_metrics.json`` for every setting folder (as written by
``eval.py``, e.g. ``results/demo/lmac_eval``) and prints one row per setting: the interpreter's
value and, in parentheses, the random mask's / the swapped mask's where the metric has them.

Usage::

    python benchmarks/metrics_table.py results/demo/lmac_eval

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import json
import os

COLUMNS = [
    ("accuracy", "classifier acc", ()),
    ("mask_input_dependence", "between-clip variance share", ()),
    ("SPS", "SPS", ()),
    ("fid_in", "Fid-In (random / swapped)", ("random_", "swap_")),
    ("FF", "FF (random / swapped)", ("random_", "swap_")),
    ("AI", "AI % (random / swapped)", ("random_", "swap_")),
    ("loc_precision", "loc. precision (random)", ("random_",)),
    ("loc_iou", "loc. IoU (random)", ("random_",)),
    ("loc_time_corr", "time-profile corr.", ()),
]


def fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def cell(metrics: dict, key: str, baselines: tuple) -> str:
    if key not in metrics:
        return "-"
    text = fmt(metrics[key])
    others = [fmt(metrics[p + key]) for p in baselines if p + key in metrics]
    return f"{text} ({' / '.join(others)})" if others else text


def table(folder: str) -> str:
    """The Markdown table of every ``<folder>/*/test_metrics.json``."""
    settings = sorted(
        name
        for name in os.listdir(folder)
        if os.path.isfile(os.path.join(folder, name, "test_metrics.json"))
    )
    if not settings:
        raise FileNotFoundError(f"no <setting>/test_metrics.json under {folder}; run eval.py first")
    lines = [
        "| setting | clips | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    for name in settings:
        with open(os.path.join(folder, name, "test_metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        cells = [cell(metrics, key, baselines) for key, _, baselines in COLUMNS]
        lines.append(f"| {name} | {int(metrics['n_samples'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="an eval.py output folder (one subfolder per setting)")
    text = table(parser.parse_args(argv).folder)
    print(text)
    return text


if __name__ == "__main__":
    main()
