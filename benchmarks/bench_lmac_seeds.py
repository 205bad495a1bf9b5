#!/usr/bin/env python3
"""Is L-MAC's quality a property of the objective or of one lucky run? Several seeds each.

One 15-epoch CPU run of L-MAC (``bench_lmac_quality.py``) lands on clip-specific masks or on
masks shared by every clip depending on float rounding and the noise draws (README, L-MAC).
This script trains L-MAC several times on the same data and the same CNN14 (made once, by the
first run), once per (variant, seed), each variant being ``train_lmac.py`` overrides on top of
the benchmark's own (``--number_of_epochs 15 --batch_size 8 --lr 0.005``), and scores every
run on test fold 5 clean and in mixtures (``eval.py``, as ``bench_lmac_quality.py``).

It writes ``<output>/seeds.json`` (every run's metrics) and ``<output>/seeds.md``: per variant
and setting, the mean and the range over seeds of the between-clip share of mask variance,
FF against the swapped mask's (another clip's mask), Fid-In, SPS, localisation precision
against the random mask's, and the time-profile correlation with the event, and how many
seeds meet each of issue 9's targets (``bench_lmac_quality.targets``).

Runs whose outputs exist are not rerun, so the same command again only rebuilds the tables
(``--readme README.md --block lmac-seeds`` also writes them into README).

Usage (about 4 minutes per run on an idle 2-core CPU, plus 2 for the data and the CNN14)::

    python benchmarks/bench_lmac_seeds.py results/lmac_seeds --seeds 1 2 3 \\
        --variant "published=" --variant "bounded=--out_loss bounded"

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_lmac_quality as quality  # noqa: E402
import metrics_table  # noqa: E402

#: Made by the first run and shared (symlinked) by the others.
SHARED = ("synth10", "wham_noise", "audio_cache", "classifier_cnn14", "pretrained")
#: (metric key, label): the columns of seeds.md; ``swap_`` / ``random_`` references in labels.
COLUMNS = [
    ("mask_input_dependence", "between-clip share (>= 0.5)"),
    ("FF", "FF"),
    ("swap_FF", "FF, swapped mask"),
    ("fid_in", "Fid-In"),
    ("SPS", "SPS (>= 0.8)"),
    ("loc_precision", "loc. precision"),
    ("random_loc_precision", "loc. precision, random mask"),
    ("loc_time_corr", "time-profile corr."),
]


def parse_variant(text: str) -> tuple[str, str]:
    """``NAME=ARGS`` -> (NAME, ARGS); ARGS may be empty (the benchmark's own settings)."""
    name, sep, extra = text.partition("=")
    if not sep or not name.strip() or "/" in name:
        raise argparse.ArgumentTypeError(
            f"--variant {text!r}: write NAME=TRAIN_LMAC_ARGS, e.g. 'bounded=--out_loss bounded' "
            "or 'published=' (NAME without '/')"
        )
    return name.strip(), extra.strip()


def run_one(out: str, base: str | None, extra: str, seed: int) -> dict:
    """Train and score one L-MAC (data and CNN14 shared with ``base``); its test metrics."""
    os.makedirs(out, exist_ok=True)
    if base is not None:
        for name in SHARED:
            link = os.path.join(out, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(base, name), link)
    args = f"{' '.join(quality.LMAC_TRAIN)} --seed {seed} {extra}".strip()
    quality.main([out, "--skip_amt", "--lmac_args", args])
    return {
        name: quality.load(f"{out}/lmac_eval/{name}/test_metrics.json")
        for name in ("clean", "mixtures")
    }


def summary(values: list[float]) -> str:
    """``mean (min-max)`` over seeds, 3 significant places as the other tables."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return quality.fmt(mean)
    return f"{quality.fmt(mean)} ({quality.fmt(min(values))} to {quality.fmt(max(values))})"


def tables(runs: dict, seeds: list[int]) -> str:
    """Markdown: per setting, one row per variant (mean and range over seeds), then targets."""
    lines = [f"Seeds {', '.join(map(str, seeds))}; each cell the mean over seeds (min to max).", ""]
    for setting in ("clean", "mixtures"):
        lines += [
            f"**{setting}** (test fold 5)",
            "",
            "| variant | " + " | ".join(label for _, label in COLUMNS) + " |",
            "| --- " * (len(COLUMNS) + 1) + "|",
        ]
        for variant, by_seed in runs.items():
            cells = [summary([by_seed[s][setting][key] for s in seeds]) for key, _ in COLUMNS]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines += ["", f"Seeds meeting each of issue 9's targets ({setting}):", ""]
        names = list(quality.targets(next(iter(runs.values()))[seeds[0]][setting]))
        lines += ["| variant | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
        for variant, by_seed in runs.items():
            per_seed = [quality.targets(by_seed[s][setting]) for s in seeds]
            met = [sum(bool(t[n][2]) for t in per_seed) for n in names]
            lines.append(f"| {variant} | " + " | ".join(f"{m} / {len(seeds)}" for m in met) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="output folder (results/lmac_seeds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        help="NAME=TRAIN_LMAC_ARGS (repeatable; default: published= and "
        "bounded=--out_loss bounded)",
    )
    metrics_table.add_readme_options(parser)
    args = parser.parse_args(argv)
    metrics_table.check_readme_options(parser, args)
    variants = args.variant or [("published", ""), ("bounded", "--out_loss bounded")]
    names = [name for name, _ in variants]
    if len(set(names)) != len(names):
        parser.error(f"--variant names must differ: {names}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must differ: {args.seeds}")

    out = os.path.abspath(args.output)
    base = None
    runs: dict = {}
    for name, extra in variants:
        runs[name] = {}
        for seed in args.seeds:
            run_dir = f"{out}/{name}_seed{seed}"
            print(f"== L-MAC {name}, seed {seed}: {run_dir}", flush=True)
            runs[name][seed] = run_one(run_dir, base, extra, seed)
            base = base or run_dir
    report = {
        "seeds": args.seeds,
        "variants": {name: extra for name, extra in variants},
        "lmac_train": quality.LMAC_TRAIN,
        "runs": {name: {str(s): m for s, m in by_seed.items()} for name, by_seed in runs.items()},
    }
    with open(f"{out}/seeds.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    text = tables(runs, args.seeds)
    with open(f"{out}/seeds.md", "w", encoding="utf-8") as f:
        f.write(text)
    metrics_table.emit_table(args, text)
    print(f"wrote {out}/seeds.json and {out}/seeds.md")
    return report


if __name__ == "__main__":
    main()
