#!/usr/bin/env python3
"""Print the metrics of evaluation folders as a Markdown table (the tables in README.md).

Reads ``<folder>/<setting>/test_metrics.json`` for every setting folder (as written by
``eval.py``, e.g. ``results/demo/lmac_eval``) and prints one row per setting: the interpreter's
value and, in parentheses, the random mask's / the swapped mask's where the metric has them.
With ``--setting S`` the rows are the methods instead: every ``<folder>/<method>/S/`` (e.g.
the demo's ``results/demo/compare``, one folder per interpreter).

Usage::

    python benchmarks/metrics_table.py results/demo/lmac_eval
    python benchmarks/metrics_table.py results/demo/compare --setting mixtures
    # write the table into README.md between <!-- table:NAME --> and <!-- /table:NAME -->
    ... --readme README.md --block NAME

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


def markdown(first: str, rows: list[tuple[str, str]]) -> str:
    """The Markdown table of ``rows``: ``(row name, test_metrics.json path)`` each; ``first``
    names the first column."""
    lines = [
        f"| {first} | clips | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    for name, path in rows:
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
        cells = [cell(metrics, key, baselines) for key, _, baselines in COLUMNS]
        lines.append(f"| {name} | {int(metrics['n_samples'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(folder: str) -> str:
    """The Markdown table of every ``<folder>/*/test_metrics.json``."""
    settings = sorted(
        name
        for name in os.listdir(folder)
        if os.path.isfile(os.path.join(folder, name, "test_metrics.json"))
    )
    if not settings:
        raise FileNotFoundError(f"no <setting>/test_metrics.json under {folder}; run eval.py first")
    return markdown(
        "setting", [(name, os.path.join(folder, name, "test_metrics.json")) for name in settings]
    )


def methods_table(folder: str, setting: str, order: tuple = ()) -> str:
    """The Markdown table of every ``<folder>/<method>/<setting>/test_metrics.json``.

    Rows follow ``order`` (method folder names), then the other methods alphabetically.
    """
    found = sorted(
        name
        for name in os.listdir(folder)
        if os.path.isfile(os.path.join(folder, name, setting, "test_metrics.json"))
    )
    if not found:
        raise FileNotFoundError(
            f"no <method>/{setting}/test_metrics.json under {folder}; run the demo (or eval.py) first"
        )
    methods = [m for m in order if m in found] + [m for m in found if m not in order]
    return markdown(
        "method", [(m, os.path.join(folder, m, setting, "test_metrics.json")) for m in methods]
    )


def write_block(readme: str, block: str, text: str) -> None:
    """Replace the lines between ``<!-- table:BLOCK -->`` and ``<!-- /table:BLOCK -->``."""
    begin, end = f"<!-- table:{block} -->", f"<!-- /table:{block} -->"
    with open(readme, encoding="utf-8") as f:
        content = f.read()
    if content.count(begin) != 1 or content.count(end) != 1:
        raise ValueError(f"{readme} must hold {begin} and {end} once each, around the table")
    head, rest = content.split(begin)
    _, tail = rest.split(end)
    with open(readme, "w", encoding="utf-8") as f:
        f.write(f"{head}{begin}\n{text}\n{end}{tail}")


def add_readme_options(parser: argparse.ArgumentParser) -> None:
    """``--readme FILE --block NAME``: also write the table into a Markdown block."""
    parser.add_argument("--readme", help="write the table into this Markdown file ...")
    parser.add_argument(
        "--block", help="... between <!-- table:BLOCK --> and <!-- /table:BLOCK -->"
    )


def check_readme_options(parser: argparse.ArgumentParser, args) -> None:
    if bool(args.readme) != bool(args.block):
        parser.error("--readme and --block go together")


def emit_table(args, text: str) -> None:
    """Print ``text``, and write it into the README block of ``--readme`` / ``--block``."""
    if args.readme:
        write_block(args.readme, args.block, text)
    print(text)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="an eval.py output folder (one subfolder per setting)")
    parser.add_argument("--setting", help="rows = the method subfolders, in this setting")
    parser.add_argument("--order", default="L-MAC,L2I,PIQ,Saliency,Grad-CAM,AMT-FocalNet,AMT-ViT",
                        help="method rows first, in this order (comma-separated)")  # fmt: skip
    add_readme_options(parser)
    args = parser.parse_args(argv)
    check_readme_options(parser, args)
    if args.setting:
        text = methods_table(args.folder, args.setting, tuple(args.order.split(",")))
    else:
        text = table(args.folder)
    emit_table(args, text)
    return text


if __name__ == "__main__":
    main()
