#!/usr/bin/env python3
"""Decoding + resampling every epoch vs. the on-disk waveform cache of ``dataio_prep``.

Generates a small synthetic ESC-50 set at ESC-50's format (44.1 kHz, 5 s clips) in a
temporary folder, then iterates over every item of the train split for a few epochs, once
without cache (decode + downmix + resample 44.1 -> 16 kHz each time) and once with
``cache_folder`` (the first epoch fills the cache, the next ones read float32 ``.npy`` files).

Then the data pipeline alone as training sees it (issue 13: does loading starve the model?):
the cached train split through SpeechBrain's DataLoader (``PaddedBatch``, batch
``--batch_size``, shuffled) with ``num_workers`` 0 and 2 (``pin_memory`` on CUDA), each clip
with its WHAM! noise drawn in the workers (``noise_sig``, ``wham_noise_in_workers: True``, the
training default) or, for comparison, drawn in the main process (``WhamNoise.sample``, the
older path), mixed at 0 dB (``mix_at_snr``), in clips/s, to set against the model's clips/s in bench_lmac.py.

Usage::

    python benchmarks/bench_data_cache.py results/bench_data_cache.json --n_classes 5 \
        --clips_per_class_per_fold 2 --epochs 3

Prints a table and writes the numbers to the JSON path given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from audio_interpretability.data.esc50 import dataio_prep, prepare_esc50
from audio_interpretability.data.synthetic import generate_synthetic_esc50


def epoch_seconds(dataset) -> float:
    """Wall-clock seconds to read every item of ``dataset`` once."""
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]["sig"]
    return time.perf_counter() - start


def pipeline_clips_per_s(
    dataset, noise, batch_size: int, workers: int, epochs: int, in_workers: bool
) -> float:
    """Clips/s of loading + WHAM! mixing over ``epochs`` passes (after one warm-up pass).

    ``in_workers``: the training default (``wham_noise_in_workers: True``), each clip's noise
    is the dataset's ``noise_sig`` item, drawn in the workers for (seed, epoch, clip id); else
    the batch's noise is drawn in the main process, as the forward pass did before.
    """
    from speechbrain.dataio.batch import PaddedBatch
    from torch.utils.data import DataLoader

    from audio_interpretability.data.wham import add_clip_noise, mix_at_snr

    clip_noise = add_clip_noise(dataset, noise) if in_workers else None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=PaddedBatch,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(0),
    )

    def one_pass(epoch: int) -> int:
        if clip_noise is not None:
            clip_noise.set_epoch(epoch)  # as the Brain's on_stage_start(TRAIN, epoch) does
        n = 0
        for batch in loader:
            wavs, _ = batch.sig
            if clip_noise is not None:
                clip = batch.noise_sig.data
            else:
                clip = noise.sample(wavs.shape[0], wavs.shape[1])
            mix_at_snr(wavs, clip, 0.0)
            n += wavs.shape[0]
        return n

    one_pass(0)  # warm-up: page cache filled
    start = time.perf_counter()
    clips = sum(one_pass(epoch) for epoch in range(1, epochs + 1))
    return clips / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_json", help="where to write the results (JSON)")
    parser.add_argument("--n_classes", type=int, default=5)
    parser.add_argument("--clips_per_class_per_fold", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--source_rate", type=int, default=44100)
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=16, help="pipeline: batch size")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as root:
        data = os.path.join(root, "esc50")
        generate_synthetic_esc50(
            data,
            n_classes=args.n_classes,
            clips_per_class_per_fold=args.clips_per_class_per_fold,
            duration=args.duration,
            sample_rate=args.source_rate,
        )
        manifests = [os.path.join(root, f"{s}.json") for s in ("train", "valid", "test")]
        prepare_esc50(data, *manifests)
        annotations = {"train": manifests[0]}
        encoder = os.path.join(root, "label_encoder.txt")
        plain = dataio_prep(annotations, args.sample_rate, encoder)["train"]
        cached = dataio_prep(annotations, args.sample_rate, encoder, os.path.join(root, "c"))[
            "train"
        ]
        results = {"no_cache": [], "cache": []}
        for _ in range(args.epochs):
            results["no_cache"].append(epoch_seconds(plain))
            results["cache"].append(epoch_seconds(cached))
        n_items = len(plain)
        from audio_interpretability.data.synthetic import generate_wham_noise
        from audio_interpretability.data.wham import WhamNoise

        wham = os.path.join(root, "wham_noise")
        generate_wham_noise(wham, n_files=(8, 2, 2), min_duration=2.0, max_duration=10.0)
        noise = WhamNoise(wham, sample_rate=args.sample_rate, split="tr", seed=0)
        pipeline = {}
        for in_workers in (True, False):
            for workers in (0, 2):
                data_set = dataio_prep(
                    annotations, args.sample_rate, encoder, os.path.join(root, "c")
                )["train"]  # a fresh copy: add_clip_noise changes the dataset in place
                pipeline[(in_workers, workers)] = pipeline_clips_per_s(
                    data_set, noise, args.batch_size, workers, args.epochs, in_workers
                )

    report = {
        "benchmark": "bench_data_cache",
        "items_per_epoch": n_items,
        "clip_seconds": args.duration,
        "source_rate": args.source_rate,
        "sample_rate": args.sample_rate,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "epoch_seconds": results,
        "pipeline_batch_size": args.batch_size,
        "pipeline_clips_per_s": {
            f"num_workers_{w}": v for (in_workers, w), v in pipeline.items() if in_workers
        },
        "pipeline_clips_per_s_noise_in_main_process": {
            f"num_workers_{w}": v for (in_workers, w), v in pipeline.items() if not in_workers
        },
    }
    print(f"{n_items} clips of {args.duration} s, {args.source_rate} -> {args.sample_rate} Hz")
    print(f"{'epoch':>5} | {'no cache (s)':>12} | {'cache (s)':>10} | {'ms/clip cached':>14}")
    for epoch, (a, b) in enumerate(zip(results["no_cache"], results["cache"]), start=1):
        note = " (fills cache)" if epoch == 1 else ""
        print(f"{epoch:>5} | {a:>12.3f} | {b:>10.3f} | {1000 * b / n_items:>14.2f}{note}")
    if args.epochs > 1:
        steady = sum(results["cache"][1:]) / (args.epochs - 1)
        base = sum(results["no_cache"][1:]) / (args.epochs - 1)
        report["steady_state_speedup"] = base / steady
        print(f"steady-state speed-up of the cache: {base / steady:.1f}x")
    for (in_workers, workers), rate in pipeline.items():
        where = "in the workers" if in_workers else "in the main process"
        print(
            f"pipeline (cached, batch {args.batch_size}, WHAM! drawn {where} and mixed), "
            f"num_workers {workers}: {rate:.0f} clips/s"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
    with open(args.output_json, "w") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
