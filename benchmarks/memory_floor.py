#!/usr/bin/env python3
"""What stays resident in an L-MAC training process between steps, part by part.

Issue 13 asks for a training peak of at most 4.0 GB in fp32 at the paper configuration. This
script builds our L-MAC step as ``bench_lmac.py`` does (CNN14 64 / 2048, the 236 M-parameter
decoder, 5 s clips), runs two steps, and prints the process's resident memory (``/proc/self/
statm``, GiB) after importing torch, after building the models and after each step, next to
the sizes of what must stay: the decoder's parameters, the frozen CNN14's, and the optimizer's
state (Adam's two moments). Run it with ``AUDIO_INTERPRETABILITY_MMAP_THRESHOLD=0`` (freed
memory returned to the system) so that the figures are what lives, not what glibc keeps.

Usage::

    AUDIO_INTERPRETABILITY_MMAP_THRESHOLD=0 python benchmarks/memory_floor.py OUT.json \\
        [--ours_overrides '{"optimizer_in_backward": true, "max_grad_norm": 0}']

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 2**30


def resident_gib() -> float:
    """The resident set of this process now, in GiB."""
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / GIB


def tensor_gib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / GIB


def optimizer_states(optimizer) -> list:
    """Every tensor of the optimizer's state (also for OptimizerInBackward's optimizers)."""
    optimizers = getattr(optimizer, "optimizers", [optimizer])
    return [
        value
        for opt in optimizers
        for state in opt.state.values()
        for value in state.values()
        if hasattr(value, "numel") and value.dim() > 0
    ]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="JSON file for the figures")
    parser.add_argument("--ours_overrides", default="{}", help="YAML overrides (JSON)")
    parser.add_argument("--config", default="paper", choices=["paper", "tiny"])
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)

    figures = {"python": resident_gib()}
    sys.path.insert(0, HERE)
    import bench_lmac  # noqa: E402 (imports audio_interpretability, then torch)

    figures["torch imported"] = resident_gib()
    config = argparse.Namespace(
        config=args.config,
        ours_overrides=args.ours_overrides,
        device="cpu",
        precision="fp32",
        batch_size=args.batch_size,
        seconds=args.seconds,
    )
    step = bench_lmac._ours("train", config)
    brain = step.brain
    figures["models built"] = resident_gib()
    for i in (1, 2):
        step()
        gc.collect()
        figures[f"after step {i}"] = resident_gib()
    classifier = brain.hparams.embedding_model, brain.hparams.classifier
    sizes = {
        "decoder parameters": tensor_gib(brain.modules.psi.parameters()),
        "classifier parameters and buffers": sum(
            tensor_gib(m.parameters()) + tensor_gib(m.buffers()) for m in classifier
        ),
        "optimizer state": tensor_gib(optimizer_states(brain.optimizer)),
        "gradients alive": tensor_gib(
            p.grad for p in brain.modules.psi.parameters() if p.grad is not None
        ),
    }
    # the largest resident set so far (ru_maxrss, KiB): the training steps' peak
    figures["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report = {"resident_gib": figures, "sizes_gib": sizes, "config": vars(args)}
    for name, value in {**figures, **sizes}.items():
        print(f"{value:7.3f} GiB  {name}")
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
