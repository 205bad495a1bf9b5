"""Where one L-MAC training step's time goes, by kind of operator, and how fast each kind runs.

Builds our L-MAC step as ``bench_lmac.py`` does (paper configuration: full-width CNN14 and
decoder, 5 s clips), runs ``--warmup`` steps (the first has no Adam moments), then one step
under ``torch.utils.flop_counter`` (FLOPs per operator) and one under ``torch.profiler`` (time
per operator), and times a square fp32 matrix product (4096 x 4096, best of 5, before and after
the steps) as the rate this machine's CPU reaches at its best. Groups: the matrix products (the
decoder's transposed convolutions run as ``mm`` / ``addmm_``), the oneDNN convolutions (CNN14,
forward and input gradient), fold / unfold (``col2im`` / ``im2col``), batch norm, and the rest.
Times are the operators' self time in the profiler (summed over threads, so the shares can add
up to more than the step); the profiled step is a little slower than an unprofiled one. The
tensors are on transparent huge pages, as ``bench_lmac.py`` runs ours
(``THP_MEM_ALLOC_ENABLE=0``: off).

Usage::

    python benchmarks/profile_lmac_step.py results/profile/lmac_b16.json --batch_size 16

Prints a Markdown table and writes JSON (``--readme README.md --block NAME``: the table into
that Markdown block too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# isort: off
import audio_interpretability  # noqa: F401 (first: huge pages on, as bench_lmac.py runs ours)

# isort: on
import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import bench_lmac  # noqa: E402
from metrics_table import add_readme_options, check_readme_options, emit_table  # noqa: E402

GROUPS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm"),
    "convolutions (oneDNN)": ("aten::mkldnn_convolution", "aten::convolution_backward"),
    "fold / unfold": ("aten::col2im", "aten::im2col"),
    "batch norm": (
        "aten::native_batch_norm",
        "aten::native_batch_norm_backward",
        "aten::_native_batch_norm_legit",
        "aten::_native_batch_norm_legit_no_training",
    ),
}
# the FLOP counter's operators behind each group (it counts convolutions at aten::convolution)
FLOP_OPS = {
    "matrix products": ("mm", "addmm", "addmm_", "bmm"),
    "convolutions (oneDNN)": ("convolution", "convolution_backward"),
}


def matmul_tflops(n: int = 4096, repeats: int = 5) -> float:
    """Best rate of an (n, n) @ (n, n) fp32 product on this CPU, in TFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e12


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flops_by_op(step) -> dict:
    """FLOPs of one step per operator name (without overload), e.g. ``{"mm": 1.2e12}``,
    counted as ``bench_lmac.py`` counts them."""
    counts = {}
    for op, n in bench_lmac.count_flops(step).get_flop_counts().get("Global", {}).items():
        name = str(op).split(".")[1] if str(op).startswith("aten.") else str(op)
        counts[name] = counts.get(name, 0) + n
    return counts


def op_seconds(step) -> tuple[dict, float]:
    """Self time of each operator in one profiled step, and the step's wall time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = _timed(step)
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}, wall


def breakdown(seconds: dict, flops: dict, wall: float, peak: float) -> list:
    """Rows per group: seconds, share of the step, TFLOP, TFLOP/s, fraction of ``peak``."""
    rows, grouped = [], set()
    for group, ops in GROUPS.items():
        s = sum(seconds.get(op, 0.0) for op in ops)
        grouped.update(ops)
        f = sum(flops.get(op, 0) for op in FLOP_OPS.get(group, ()))
        rows.append(_row(group, s, f, wall, peak))
    rest = sum(s for op, s in seconds.items() if op not in grouped and op.startswith("aten::"))
    rows.append(_row("other aten operators", rest, 0, wall, peak))
    return rows


def _row(group: str, s: float, f: float, wall: float, peak: float) -> dict:
    rate = f / s / 1e12 if f and s else None
    return {
        "group": group,
        "seconds": s,
        "share_of_step": s / wall,
        "tflop": f / 1e12 if f else None,
        "tflops_per_s": rate,
        "fraction_of_matmul_rate": rate / peak if rate else None,
    }


def markdown(result: dict) -> str:
    """A line on the step and the machine, then a table of the groups."""
    lines = [
        f"Batch {result['batch_size']}, {result['threads']} threads"
        f"{', huge pages' if result.get('huge_pages') else ''}: the profiled step takes "
        f"{result['profiled_step_seconds']:.1f} s ({result['step_tflop']:.2f} TFLOP); an fp32 "
        f"4096 x 4096 matrix product runs at {result['matmul_tflops_per_s']:.3f} TFLOP/s.",
        "",
        "| operators | s | share of step | TFLOP | TFLOP/s | of the matmul rate |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["groups"]:
        tflop = "" if r["tflop"] is None else f"{r['tflop']:.2f}"
        rate = "" if r["tflops_per_s"] is None else f"{r['tflops_per_s']:.3f}"
        frac = "" if r["fraction_of_matmul_rate"] is None else f"{r['fraction_of_matmul_rate']:.0%}"
        lines.append(
            f"| {r['group']} | {r['seconds']:.2f} | {r['share_of_step']:.0%} | {tflop} | "
            f"{rate} | {frac} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="JSON file for the results")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    add_readme_options(parser)
    args = parser.parse_args(argv)
    check_readme_options(parser, args)
    if min(args.batch_size, args.threads) < 1 or args.warmup < 0 or args.seconds <= 0:
        parser.error(
            "--batch_size and --threads must be at least 1, --warmup at least 0, --seconds > 0"
        )
    torch.set_num_threads(args.threads)
    peak = matmul_tflops()
    options = argparse.Namespace(
        device="cpu", precision="fp32", batch_size=args.batch_size, seconds=args.seconds,
        ours_overrides="{}", config="paper",
    )  # fmt: skip
    step = bench_lmac._ours("train", options)
    warmup = [_timed(step) for _ in range(args.warmup)]
    flops = flops_by_op(step)
    seconds, wall = op_seconds(step)
    peak = max(peak, matmul_tflops())  # the best of before and after: the machine is noisy
    result = {
        "batch_size": args.batch_size,
        "threads": args.threads,
        "warmup_seconds": warmup,
        "profiled_step_seconds": wall,
        "step_tflop": sum(flops.values()) / 1e12,
        "matmul_tflops_per_s": peak,
        "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        "groups": breakdown(seconds, flops, wall, peak),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    text = markdown(result)
    emit_table(args, text)
    return result


if __name__ == "__main__":
    main()
