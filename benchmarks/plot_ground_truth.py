#!/usr/bin/env python3
"""Figure of the ground-truth event bins of synthetic clips: the former and the current rule.

For a few test clips (one per class type) it shows the input spectrogram, the ground truth of
the former rule (event above the background, within 60 dB of the event's peak) and of the
current default of :func:`~audio_interpretability.data.synthetic.ground_truth_mask` (a 6 dB
margin over the background, within 30 dB of the event's peak), with the number of event bins.

Usage::

    python recipes/ESC50/prepare_synthetic.py --output_folder D --n_classes 10 \\
        --clips_per_class_per_fold 8 --duration 2 --sample_rate 44100 --seed 0
    python benchmarks/plot_ground_truth.py D docs/img/ground_truth.png

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import glob
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from audio_interpretability.data.esc50 import load_audio  # noqa: E402
from audio_interpretability.data.synthetic import ground_truth_mask  # noqa: E402
from audio_interpretability.features import Frontend  # noqa: E402

RULES = [
    ("former: > background, -60 dB floor", 0.0, -60.0),
    ("current: +6 dB, -30 dB floor", 6.0, -30.0),
]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_folder", help="a synthetic ESC-50 folder (with stems/)")
    parser.add_argument("output", help="PNG to write")
    parser.add_argument("--n_clips", type=int, default=5)
    args = parser.parse_args(argv)
    frontend = Frontend()
    clips = sorted(glob.glob(os.path.join(args.data_folder, "audio", "5-*.wav")))
    if not clips:
        raise FileNotFoundError(f"no fold-5 clips in {args.data_folder}/audio; write the set first")
    step = max(1, len(clips) // args.n_clips)
    picked = clips[::step][: args.n_clips]
    fig, axes = plt.subplots(len(picked), 3, figsize=(11, 1.9 * len(picked)), squeeze=False)
    for row, path in enumerate(picked):
        stem = os.path.basename(path)[:-4]
        stems = os.path.join(args.data_folder, "stems", stem)
        event = load_audio(f"{stems}_event.wav", frontend.sample_rate)[None]
        background = load_audio(f"{stems}_background.wav", frontend.sample_rate)[None]
        X = frontend(load_audio(path, frontend.sample_rate)[None]).X[0]
        axes[row, 0].imshow(X.T, origin="lower", aspect="auto")
        axes[row, 0].set_title(f"{stem}: log1p|STFT|", fontsize=8)
        for col, (title, margin, floor) in enumerate(RULES, start=1):
            truth = ground_truth_mask(event, background, frontend, margin, floor)[0]
            axes[row, col].imshow(truth.T, origin="lower", aspect="auto", interpolation="nearest")
            axes[row, col].set_title(f"{title}: {int(truth.sum())} bins", fontsize=8)
    for ax in axes.flat:
        ax.set_xlabel("frame", fontsize=7)
        ax.set_ylabel("bin", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output, dpi=60)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
