#!/usr/bin/env python3
"""One Markdown table of every ``bench_lmac.py`` / ``bench_amt.py`` JSON in a folder.

Rows: implementation (ours / the published step re-implemented), stage, precision, batch;
columns: seconds per batch, clips/s, peak memory (CUDA when measured on a GPU, else RSS),
model FLOPs per clip, TFLOP/s reached and the fraction of the peak given to the benchmark
(``--peak_tflops``), and for ours the speed-up over the published step re-implemented and
timed in the same run at the same precision and batch size, and over the fp32 re-implementation
at the same batch size (the published recipe's default precision). For AMT the speed-up is over
``bench_amt.py``'s re-implementation (transformers' FocalNet / ViT, timed alternately with ours
on the same batch); the published recipe's fixed per-batch figures (2.3 s / 2.4 s, another day's
machine) are not in the table: they stay in the JSON (``published_s``,
``speedup_vs_published_figure``) and in ``bench_amt.py``'s printout. A JSON from before the
re-implementation existed (no ``published_reimpl_s_median``) gives ours without a speed-up.

Usage::

    python benchmarks/perf_table.py results/gpu        # after benchmarks/run_gpu.sh
    python benchmarks/perf_table.py results/bench14 --readme README.md --block perf
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: An mmap threshold (bytes) from which freed memory counts as kept for reuse (the package's
#: default is 1 GiB); below it, e.g. 131072, every larger block goes back at once.
KEPT_THRESHOLD = 1 << 24


def label(impl: str, config: dict, huge_pages=None, mmap_threshold=None) -> str:
    """``ours`` (with its YAML overrides, e.g. ``optimizer_in_backward``) or the re-impl.,
    and where the run says so, the difference from how each ships: our package turns
    transparent huge pages on (``THP_MEM_ALLOC_ENABLE``) and keeps freed memory for reuse
    (glibc's mmap threshold, ``mmap_threshold`` in the JSON), the published recipe does
    neither. ``None``: not recorded (older runs)."""
    small = mmap_threshold is not None and 0 < mmap_threshold < KEPT_THRESHOLD
    if impl != "ours":
        kept = ", freed memory kept" if mmap_threshold and not small else ""
        return "published re-impl." + (", huge pages" if huge_pages else "") + kept
    overrides = json.loads(config.get("ours_overrides") or "{}")
    pages = ", no huge pages" if huge_pages is False else ""
    returned = ", freed memory returned" if mmap_threshold == 0 else ""
    if small:  # a fixed small threshold: every larger block is returned at once
        returned = f", freed memory returned at once ({mmap_threshold // 1024} KiB threshold)"
    return "ours" + "".join(f", {k}: {v}" for k, v in overrides.items()) + pages + returned


def lmac_rows(data: dict) -> list[dict]:
    results = data["results"]
    by = {(r["impl"], r["stage"]): r for r in results}
    tiny = " [tiny]" if data["config"].get("config") == "tiny" else ""  # bench_lmac --config tiny
    rows = []
    for r in results:
        ref = by.get(("published", r["stage"]))
        speedup = ref["seconds_per_batch"] / r["seconds_per_batch"] if ref else None
        rows.append(
            {
                "what": f"L-MAC{tiny} {r['stage']} ({label(r['impl'], data['config'], r.get('huge_pages'), r.get('mmap_threshold'))})",
                "precision": r["precision"],
                "batch": r.get("batch_size", data["config"]["batch_size"]),
                "s": r["seconds_per_batch"],
                "clips": r.get("clips_per_s"),
                "mem": r.get("peak_cuda_gb", r["peak_rss_gb"]),
                "flops": r.get("flops_per_clip"),
                "tflops": r.get("tflops_per_s"),
                "peak": r.get("fraction_of_peak"),
                "speedup": speedup if r["impl"] == "ours" else None,
                "impl": r["impl"],
                "stage": r["stage"],
                "huge_pages": r.get("huge_pages"),
            }
        )
    return rows


def amt_rows(data: dict) -> list[dict]:
    """Ours and the published step re-implemented (same run, same batch), per model."""
    config = data["config"]
    rows = []
    for model, entry in data["models"].items():
        common = {"precision": config["precision"], "batch": config["batch_size"]}
        # "vs fp32 re-impl." compares the same model at the same size
        stage = f"AMT {model} {config.get('config', 'paper')}"
        ref = entry.get("published_reimpl_s_median")
        if "step_s_median" in entry:
            rows.append(
                {
                    "what": f"AMT {entry['name']} eval (ours)",
                    **common,
                    "s": entry["step_s_median"],
                    "clips": entry.get("clips_per_s"),
                    "mem": entry.get("peak_mem_GiB"),
                    "flops": entry.get("flops_per_clip"),
                    "tflops": entry.get("tflops_per_s"),
                    "peak": entry.get("fraction_of_peak"),
                    "speedup": ref / entry["step_s_median"] if ref else None,
                    "impl": "ours",
                    "stage": stage,
                }
            )
        if ref:
            rows.append(
                {
                    "what": f"AMT {entry['name']} eval (published re-impl.)",
                    **common,
                    "s": ref,
                    "clips": entry.get("published_reimpl_clips_per_s"),
                    "mem": entry.get("published_reimpl_peak_mem_GiB"),
                    "flops": entry.get("published_reimpl_flops_per_clip"),
                    "tflops": entry.get("published_reimpl_tflops_per_s"),
                    "peak": entry.get("published_reimpl_fraction_of_peak"),
                    "speedup": None,
                    "impl": "published",
                    "stage": stage,
                }
            )
    return rows


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def table(folder: Path) -> str:
    rows = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if "results" in data:
            rows += lmac_rows(data)
        elif "models" in data:
            rows += amt_rows(data)
    if not rows:
        raise SystemExit(f"no bench_lmac.py / bench_amt.py JSON in {folder}; run them first")
    # ours (any precision) against the fp32 re-implementation at the same stage and batch: the
    # published recipe runs in fp32 by default. Where the re-implementation ran both with and
    # without our allocator settings, the run with them (ours' environment) is the reference
    fp32_ref = {}
    for r in sorted(rows, key=lambda r: bool(r.get("huge_pages"))):
        if r.get("impl") == "published" and r["precision"] == "fp32":
            fp32_ref[(r["stage"], r["batch"])] = r["s"]
    for r in rows:
        ref = fp32_ref.get((r.get("stage"), r["batch"])) if r.get("impl") == "ours" else None
        r["vs_fp32"] = ref / r["s"] if ref else None
    lines = [
        "| what | precision | batch | s/batch | clips/s | peak memory GiB | GFLOP/clip | "
        "TFLOP/s | % of peak | speed-up | vs fp32 re-impl. |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        flops = None if r["flops"] is None else r["flops"] / 1e9
        peak = None if r["peak"] is None else 100 * r["peak"]
        lines.append(
            f"| {r['what']} | {r['precision']} | {r['batch']} | {r['s']:.3f} | "
            f"{fmt(r['clips'], '.2f')} | {fmt(r['mem'], '.2f')} | {fmt(flops, '.0f')} | "
            f"{fmt(r['tflops'], '.2f')} | {fmt(peak, '.1f')} | "
            f"{fmt(r['speedup'], '.2f')}{'x' if r['speedup'] else ''} | "
            f"{fmt(r.get('vs_fp32'), '.2f')}{'x' if r.get('vs_fp32') else ''} |"
        )
    return "\n".join(lines)


def main(argv=None) -> str:
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from metrics_table import add_readme_options, check_readme_options, emit_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="folder of bench_lmac.py / bench_amt.py JSON files")
    add_readme_options(parser)
    args = parser.parse_args(argv)
    check_readme_options(parser, args)
    text = table(Path(args.folder))
    emit_table(args, text)
    return text


if __name__ == "__main__":
    main()
