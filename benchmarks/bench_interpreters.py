#!/usr/bin/env python3
"""Every interpreter on the same classifiers and the same clips: L-MAC, L2I, PIQ, AMT-ViT.

Runs on the output folder of ``benchmarks/bench_lmac_quality.py`` (run that first: it makes
the 10-class synthetic set with ground truth, the CNN14 and ViT classifiers at the CPU size,
and L-MAC), then through the real recipes:

1. the NMF dictionary of L2I (``train_nmf.py``, 16 kHz, K 20);
2. L2I on the frozen CNN14 (``train_l2i.py``, with that dictionary);
3. PIQ on the frozen CNN14 (``train_piq.py``, K 256 codes);
4. ``eval.py --eval_protocol ours --overlap_type mixtures`` for L-MAC, L2I, PIQ and AMT-ViT:
   the same test clips (fold 5) clean and overlapped with another test clip of another class
   (0.8 / 0.2), each scored against the ground truth, with the random-mask baseline.

L2I and PIQ train at batch 8 as L-MAC does in the quality benchmark, but for 8 epochs (L-MAC:
15; about 3 minutes an epoch each on a shared 2-core CPU), at their published learning rates
scaled as L-MAC's was (x 25): L2I 0.0025, PIQ 0.005. Short CPU runs: the numbers compare the
methods at this budget, not at the papers'.

It writes ``<output>/interpreters.json`` and ``<output>/interpreters.md`` (the table of
docs/L2I.md, docs/PIQ.md and README.md). Steps whose outputs exist are skipped (``--force``
reruns them).

Usage::

    python benchmarks/bench_lmac_quality.py results/bench_lmac_quality
    python benchmarks/bench_interpreters.py results/bench_lmac_quality

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_lmac_quality import (  # noqa: E402
    CNN14_CPU,
    LMAC_CPU,
    ROOT,
    SHOWN,
    VIT_CPU,
    fmt,
    load,
    run,
)

#: 2 s clips at 16 kHz: the frames theta pools over (``Frontend.n_frames(32000)``).
FRAMES = 173
NMF_K = 20
NMF = ["--sample_rate", "16000", "--K", str(NMF_K), "--number_of_epochs", "4",
       "--batch_size", "8", "--lr", "0.002", "--save_period", "2"]  # fmt: skip
L2I = [*CNN14_CPU, "--K", str(NMF_K), "--theta_frames", str(FRAMES)]
PIQ = [*CNN14_CPU, "--K", "256"]
TRAIN = "--number_of_epochs 8 --batch_size 8"
METHODS = ("L-MAC", "L2I", "PIQ", "AMT-ViT")
ROWS = [("accuracy", "classifier accuracy", "higher"), *SHOWN]


def table(settings: dict) -> str:
    """Markdown: per setting, a row per metric, a column per method, then the random mask."""
    lines = []
    for name, per_method in settings.items():
        n = int(next(iter(per_method.values()))["n_samples"])
        lines += [
            f"**{name}** ({n} clips of test fold 5)",
            "",
            "| metric | better | " + " | ".join(per_method) + " | random mask (L-MAC's) |",
            "| --- | --- |" + " --- |" * (len(per_method) + 1),
        ]
        for key, label, better in ROWS:
            cells = [fmt(m.get(key)) for m in per_method.values()]
            rand = per_method["L-MAC"].get(f"random_{key}")
            if key in ("mask_input_dependence", "accuracy"):
                rand = None
            lines.append(f"| {label} | {better} | " + " | ".join(cells) + f" | {fmt(rand)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="the output folder of bench_lmac_quality.py")
    parser.add_argument("--train_args", default=TRAIN, help="L2I / PIQ training overrides")
    parser.add_argument("--force", action="store_true", help="rerun every step")
    args = parser.parse_args(argv)

    out = os.path.abspath(args.output)
    if not os.path.isfile(f"{out}/lmac/save/psi_model.ckpt"):
        raise FileNotFoundError(
            f"{out} holds no L-MAC run; run python benchmarks/bench_lmac_quality.py {out} first"
        )
    data, cache = f"{out}/synth10", ["--cache_folder", f"{out}/audio_cache"]
    common = ["--data_folder", data, "--out_n_neurons", "10", *cache]
    cnn14 = ["--pretrained_classifier_folder", f"{out}/pretrained/cnn14"]
    timings: dict = {}
    if os.path.isfile(f"{out}/interpreters.json") and not args.force:
        timings.update(load(f"{out}/interpreters.json").get("timings_s", {}))
    train = shlex.split(args.train_args)

    nmf_ckpt = f"{out}/nmf/save/nmf_decoder.ckpt"
    run("train_nmf", ["recipes/ESC50/interpret/train_nmf.py", "hparams/nmf.yaml", "--data_folder",
        data, *cache,
        "--output_folder", f"{out}/nmf", *NMF], f"{out}/nmf/test_metrics.json", args.force, timings)  # fmt: skip
    run(
        "train_l2i",
        ["recipes/ESC50/interpret/train_l2i.py", "hparams/l2i_cnn14.yaml", *common, *cnn14,
         *L2I, "--nmf_decoder_path", nmf_ckpt, "--output_folder", f"{out}/l2i",
         "--lr", "0.0025", *train],
        f"{out}/l2i/test_metrics.json", args.force, timings,
    )  # fmt: skip
    run(
        "train_piq",
        ["recipes/ESC50/interpret/train_piq.py", "hparams/piq_cnn14.yaml", *common, *cnn14, *PIQ,
         "--output_folder", f"{out}/piq", "--lr", "0.005", *train],
        f"{out}/piq/test_metrics.json", args.force, timings,
    )  # fmt: skip

    evals = {
        "L-MAC": ("lmac_cnn14.yaml", [*cnn14, *LMAC_CPU], f"{out}/lmac/save/psi_model.ckpt"),
        "L2I": ("l2i_cnn14.yaml", [*cnn14, *L2I, "--nmf_decoder_path", nmf_ckpt],
                f"{out}/l2i/save/psi_model.ckpt"),
        "PIQ": ("piq_cnn14.yaml", [*cnn14, *PIQ], f"{out}/piq/save/psi_model.ckpt"),
        "AMT-ViT": ("amt_vit.yaml", ["--pretrained_folder", f"{out}/pretrained/vit", *VIT_CPU],
                    None),
    }  # fmt: skip
    for method, (yaml, extra, psi) in evals.items():
        folder = f"{out}/compare/{method}"
        argv = ["recipes/ESC50/interpret/eval.py", f"hparams/{yaml}", *common, *extra,
                "--output_folder", folder, "--eval_protocol", "ours", "--overlap_type",
                "mixtures", "--batch_size", "8", "--n_saved_interpretations", "10"]  # fmt: skip
        if psi:
            argv += ["--pretrained_interpreter", psi]
        run(f"eval_{method}", argv, f"{folder}/mixtures/test_metrics.json", args.force, timings)

    settings = {
        name: {m: load(f"{out}/compare/{m}/{name}/test_metrics.json") for m in METHODS}
        for name in ("clean", "mixtures")
    }
    report = {"timings_s": timings, "train_args": args.train_args, "settings": settings}
    with open(f"{out}/interpreters.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    text = table(settings)
    with open(f"{out}/interpreters.md", "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    print(f"timings (s): {timings}; wrote {out}/interpreters.json, interpreters.md ({ROOT})")
    return report


if __name__ == "__main__":
    main()
