#!/usr/bin/env python3
"""Time one batch of the full AMT evaluation step for FocalNet-B and ViT-B/16.

The step is exactly what ``InterpreterESC50Brain.evaluate`` does per batch (minus saving
files): STFT front-end, classifier pass with maps, saliency -> resized -> quantile mask, ONE
batched masked-in / masked-out classifier pass, and every metric (accuracy, Fid-In, FF, AI, AD,
AG, SPS, COMP, in_drop). The published AMT recipe reports 2.3 s (FocalNet-B) and 2.4 s (ViT-B)
per batch of 2 five-second 16 kHz clips; it does not compute FF (no masked-out pass).

Random weights, 50 classes, paper configuration by default (5 s clips at 16 kHz, batch 2,
224 x 224 images). A breakdown of the step into its parts is timed too.

Usage::

    python benchmarks/bench_amt.py results/bench_amt_cpu.json               # CPU, 2 threads
    python benchmarks/bench_amt.py out.json --device cuda --precision bf16  # GPU, autocast

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.train_logger import FileTrainLogger

from audio_interpretability import metrics as M
from audio_interpretability.brains.amt import InterpreterESC50Brain
from audio_interpretability.features import Frontend
from audio_interpretability.models import AudioClassifier, CosineHead
from audio_interpretability.models.focalnet import FOCALNET_CONFIGS, FocalNet
from audio_interpretability.models.vit import VIT_CONFIGS, ViT

PUBLISHED_S_PER_BATCH = {"focalnet": 2.3, "vit": 2.4}
MODELS = {
    "focalnet": (
        lambda: FocalNet(**FOCALNET_CONFIGS["base"]),
        {"stages": [-1], "aggregation": "mean"},
        "FocalNet-B (base, 224)",
    ),
    "vit": (
        lambda: ViT(**VIT_CONFIGS["base"]),
        {"layers": [-1], "method": "mean"},
        "ViT-B/16 (224)",
    ),
}


def build_brain(model: str, args, folder: str) -> InterpreterESC50Brain:
    """AMT brain around a randomly initialised paper-size backbone."""
    make_backbone, saliency_options, _ = MODELS[model]
    backbone = make_backbone()
    hparams = {
        "frontend": Frontend(sample_rate=args.sample_rate),
        "model": AudioClassifier(backbone, CosineHead(backbone.embedding_dim, args.n_classes)),
        "embedding_model_path": None,
        "classifier_model_path": None,
        "output_folder": folder,
        "seed": 0,
        "save_interpretations": False,
        "n_saved_interpretations": 0,
        "add_wham_noise": False,
        "wham_folder": None,
        "wham_split": "tt",
        "wham_snr_db": 0.0,
        "random_baseline": args.random_baseline,
        "loc_threshold": 0.5,
        "train_logger": FileTrainLogger(os.path.join(folder, "log.txt")),
        "quantile": 0.9,
        "saliency_options": saliency_options,
    }
    run_opts = {"device": args.device, "precision": args.precision}
    run_opts["eval_precision"] = args.precision
    return InterpreterESC50Brain(modules={}, hparams=hparams, run_opts=run_opts)


def make_batch(args) -> PaddedBatch:
    """Random peak-normalised clips with labels, like the data pipeline's items."""
    g = torch.Generator().manual_seed(0)
    n = int(args.duration * args.sample_rate)
    items = []
    for i in range(args.batch_size):
        wav = torch.randn(n, generator=g)
        items.append(
            {
                "id": f"clip{i}",
                "sig": wav / wav.abs().max(),
                "class_string_encoded": torch.tensor([i % args.n_classes]),
            }
        )
    return PaddedBatch(items)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_step(brain: InterpreterESC50Brain, batch, args) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds per call of the Brain's evaluation step.

    The step is ``evaluate_batch``: compute_forward + every metric. CPU seconds count all
    threads; on a shared machine ``cpu / threads`` is what the step would take with the
    threads to itself.
    """
    brain.on_stage_start(sb.Stage.TEST)
    wall, cpu = [], []
    for i in range(args.warmup + args.iters):
        sync(args.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        brain.evaluate_batch(batch, sb.Stage.TEST)
        sync(args.device)
        if i >= args.warmup:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    brain.metric_accumulator.summarize()  # the metrics were really gathered
    return wall, cpu


@torch.no_grad()
def time_parts(brain: InterpreterESC50Brain, batch, args) -> dict[str, float]:
    """Median seconds of each part of the step, run separately (same order, same shapes)."""
    batch = batch.to(brain.device)
    wavs = batch.sig.data
    labels = batch.class_string_encoded.data.view(-1)
    parts: dict[str, list[float]] = {}

    def timed(name, fn, *fn_args):
        sync(args.device)
        start = time.perf_counter()
        with brain.evaluation_ctx:
            out = fn(*fn_args)
        sync(args.device)
        parts.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def metrics(clf, logits, mask):
        values = M.compute_faithfulness_metrics(clf.logits, logits[0], logits[1], mask, labels)
        return {k: v.sum().item() for k, v in values.items()}  # .item(): wait for the device

    for _ in range(max(1, args.iters)):
        spec = timed("front-end (STFT)", brain.preprocess, wavs)
        clf = timed("classifier + maps", brain.classifier_forward, spec.X, True)
        mask = timed("saliency -> mask", brain.make_mask, spec, clf).mask
        logits = timed("masked-in/out pass", brain.masked_passes, spec.X, [mask])
        timed("metrics (incl. FF)", metrics, clf, logits, mask)
    return {k: sorted(v)[len(v) // 2] for k, v in parts.items()}


def flop_figures(brain: InterpreterESC50Brain, batch, seconds: float, args) -> dict:
    """Model FLOPs of one evaluation step (``torch.utils.flop_counter``), per clip, the rate
    reached and, with ``--peak_tflops``, its fraction of the device's peak."""
    from torch.utils.flop_counter import FlopCounterMode

    brain.on_stage_start(sb.Stage.TEST)
    with FlopCounterMode(display=False) as counter:
        brain.evaluate_batch(batch, sb.Stage.TEST)
    flops = counter.get_total_flops()
    figures = {"flops_per_clip": flops / args.batch_size, "tflops_per_s": flops / seconds / 1e12}
    if args.peak_tflops:
        figures["fraction_of_peak"] = figures["tflops_per_s"] / args.peak_tflops
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="JSON file to write the results to")
    parser.add_argument("--models", nargs="+", default=["focalnet", "vit"], choices=list(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0, help="clip length (s)")
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--n_classes", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument(
        "--random_baseline", action="store_true", help="also score the random mask (2 passes)"
    )
    parser.add_argument("--flops", type=int, default=1, help="1: count FLOPs of one step")
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=0.0,
        help="the device's peak TFLOP/s at this precision (989 for an H100 / H200 in dense "
        "bf16) to report the fraction reached; 0: not reported",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = {
        "config": vars(args),
        "host": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "loadavg_start": load,
            "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name(0)
            if args.device.startswith("cuda")
            else platform.processor() or "cpu",
        },
        "models": {},
    }
    batch = make_batch(args)
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            brain = build_brain(model, args, folder)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            times, cpu = time_step(brain, batch, args)
            entry = {
                "name": MODELS[model][2],
                "params_M": sum(p.numel() for p in brain.hparams.model.parameters()) / 1e6,
                "step_s": times,
                "step_s_median": sorted(times)[len(times) // 2],
                "step_cpu_s_median": sorted(cpu)[len(cpu) // 2],
                "published_s": PUBLISHED_S_PER_BATCH[model],
                "parts_s_median": time_parts(brain, batch, args),
            }
            entry["clips_per_s"] = args.batch_size / entry["step_s_median"]
            if args.device.startswith("cuda"):
                entry["peak_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
            if args.flops:
                entry.update(flop_figures(brain, batch, entry["step_s_median"], args))
            results["models"][model] = entry
            del brain
    results["host"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    header = (
        f"{'model':24s} {'wall s/batch':>12s} {'CPU s/batch':>12s} {'published':>10s} "
        f"{'wall/published':>15s} {'clips/s':>8s} {'TFLOP/s':>8s}"
    )
    print(f"{args.device} {args.precision} batch {args.batch_size}")
    print(header)
    for entry in results["models"].values():
        ratio = entry["step_s_median"] / entry["published_s"]
        rate = f"{entry['tflops_per_s']:8.3f}" if "tflops_per_s" in entry else ""
        if "fraction_of_peak" in entry:
            rate += f" ({100 * entry['fraction_of_peak']:.1f} % of peak)"
        print(
            f"{entry['name']:24s} {entry['step_s_median']:12.3f} "
            f"{entry['step_cpu_s_median']:12.3f} {entry['published_s']:10.1f} {ratio:15.2f} "
            f"{entry['clips_per_s']:8.2f} {rate}"
        )
        for part, seconds in entry["parts_s_median"].items():
            print(f"    {part:22s} {seconds:8.3f} s")
    print(f"load average start/end: {results['host']['loadavg_start']} / "
          f"{results['host']['loadavg_end']}")  # fmt: skip
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, args.output)
    return results


if __name__ == "__main__":
    main()
