"""Does this machine's oneDNN transposed convolution give right answers for L-MAC's decoder?

On a 2-core Xeon with AVX-512 and torch 2.11, ``torch.nn.ConvTranspose2d`` on the CPU with
2 threads sometimes returns wrong values for the shape of ``convt5`` in L-MAC's full-width
decoder (2048 -> 1024 channels, kernel (3, 5), stride 2, padding 1, input 53 x 18) at batch 8
and more: thousands of outputs off by up to 0.8 in about one call of six, the others right;
with 1 thread every call was right. The published recipe trains this layer with batch 16.
Our decoder runs its layers as matrix products (``GemmConvTranspose2d``) on the CPU and is not
affected.

This script calls both on the same input ``--calls`` times and compares each output with a
float64 reference. It prints and writes (JSON) how many calls were wrong and by how much, and
exits 1 if ours was ever wrong.

Usage::

    python benchmarks/check_conv_transpose.py results/check_conv_transpose.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
WRONG = 1e-3  # relative error of a wrong output (fp32 rounding here is about 1e-5)


def check(batch_size: int, calls: int, threads: int, seed: int = 0) -> dict:
    """Wrong calls of oneDNN's ConvTranspose2d and of ours for convt5's shape."""
    sys.path.insert(0, str(REPO))
    from audio_interpretability.models.decoders import GemmConvTranspose2d

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    layer = GemmConvTranspose2d(2048, 1024, (3, 5), stride=(2, 2), padding=1)
    x = torch.randn(batch_size, 2048, 53, 18)
    with torch.no_grad():
        weight, bias = layer.weight.double(), layer.bias.double()
        reference = F.conv_transpose2d(x.double(), weight, bias, (2, 2), 1).float()
        scale = float(reference.abs().max())
        results = {}
        for name, run in (
            ("onednn", lambda: torch.nn.ConvTranspose2d.forward(layer, x)),
            ("ours", lambda: layer(x)),
        ):
            errors, wrong_outputs = [], []
            for _ in range(calls):
                error = (run() - reference).abs()
                errors.append(float(error.max()) / scale)
                wrong_outputs.append(int((error > WRONG * scale).sum()))
            results[name] = {
                "wrong_calls": sum(n > 0 for n in wrong_outputs),
                "max_relative_error": max(errors),
                "wrong_outputs_per_call": wrong_outputs,
            }
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "batch_size": batch_size,
        "calls": calls,
        "shape": "ConvTranspose2d(2048, 1024, (3, 5), stride=2, padding=1) on (B, 2048, 53, 18)",
        **results,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="JSON file for the results")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--calls", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.calls < 1 or args.threads < 1:
        parser.error("--batch_size, --calls and --threads must be at least 1")
    result = check(args.batch_size, args.calls, args.threads)
    for name in ("onednn", "ours"):
        r = result[name]
        print(
            f"{name:7s} wrong in {r['wrong_calls']} of {args.calls} calls "
            f"(largest error {r['max_relative_error']:.1e} of the largest output)"
        )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 1 if result["ours"]["wrong_calls"] else 0


if __name__ == "__main__":
    sys.exit(main())
