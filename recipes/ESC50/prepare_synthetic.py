#!/usr/bin/env python3
"""Write a synthetic ESC-50-format data set with ground-truth stems (and WHAM!-format noise).

The folder has ESC-50's exact layout (``audio/``, ``meta/esc50.csv``) plus ``stems/`` holding
each clip's event and background, so interpretations can be scored against the true
event-dominated time-frequency bins. See ``audio_interpretability.data.synthetic``.

Example
-------
python recipes/ESC50/prepare_synthetic.py --output_folder data/synth_esc50 \
    --n_classes 10 --clips_per_class_per_fold 8 --duration 5 --sample_rate 44100 --seed 0 \
    --wham_folder data/synth_wham/wham_noise

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import logging

from audio_interpretability.data.synthetic import generate_synthetic_esc50


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (names match ``generate_synthetic_esc50``'s arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_folder", required=True, help="root of the ESC-50-format set")
    parser.add_argument("--n_classes", type=int, default=10, help="number of classes (1..50)")
    parser.add_argument("--clips_per_class_per_fold", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0, help="clip length (s)")
    parser.add_argument("--sample_rate", type=int, default=44100, help="Hz, >= 16000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--wham_folder", default=None, help="also write WHAM!-format noise ({tr,cv,tt}/*.wav) here"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and generate the data set."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generate_synthetic_esc50(
        output_folder=args.output_folder,
        n_classes=args.n_classes,
        clips_per_class_per_fold=args.clips_per_class_per_fold,
        duration=args.duration,
        sample_rate=args.sample_rate,
        seed=args.seed,
        wham_folder=args.wham_folder,
    )


if __name__ == "__main__":
    main()
