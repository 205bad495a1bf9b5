#!/usr/bin/env python3
"""Peak memory and time of ``eval.py --single_sample`` against the file's length, interpreted
at once (``--single_sample_chunk_s null``) and in chunks (the default, 5 s).

Writes a long stereo 44.1 kHz file per length (a tone changing pitch every half second in
light noise), a tiny CNN14 + L-MAC decoder (random weights: memory and time do not depend on
them), and runs each case in a fresh process; peak RSS is that process's ``ru_maxrss``.

Usage::

    python benchmarks/bench_single_sample.py results/bench_single_sample.json \
        --minutes 1 10 --chunk_s 5 null

Prints a table and writes the numbers to the JSON path given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]

#: Runs in the child process: eval.py's main on argv, then prints the peak RSS (bytes).
CHILD = """
import json, resource, sys, importlib.util
spec = importlib.util.spec_from_file_location("e", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
result = module.main(sys.argv[2:])
print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "chunks": len(result["chunks"])}))
"""


def write_long_file(path: Path, minutes: float, rate: int = 44100) -> None:
    """A stereo file of ``minutes``, written block by block (never held whole)."""
    rng = np.random.default_rng(0)
    block = 10 * rate
    total = int(minutes * 60 * rate)
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as f:
        for start in range(0, total, block):
            t = (start + np.arange(min(block, total - start))) / rate
            pitch = 300.0 * (1 + (t // 0.5) % 4)
            mono = 0.4 * np.sin(2 * np.pi * pitch * t) + 0.05 * rng.standard_normal(t.shape)
            f.write(np.stack((mono, 0.5 * mono), axis=1))


def checkpoints(folder: Path) -> dict:
    from audio_interpretability.checkpoints import export_classifier
    from audio_interpretability.models.cnn14 import Cnn14
    from audio_interpretability.models.decoders import CNN14Decoder
    from audio_interpretability.models.heads import LinearHead

    torch.manual_seed(0)
    paths = export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, 5), folder)
    paths["psi"] = str(folder / "psi_model.ckpt")
    torch.save(CNN14Decoder(in_dim=64, width=16).state_dict(), paths["psi"])
    return paths


def run_case(root: Path, ckpt: dict, wav: Path, chunk_s: str, threads: int) -> dict:
    out = root / f"out_{wav.stem}_{chunk_s}"
    options = {
        "data_folder": root / "no_data",
        "output_folder": out,
        "embedding_model_path": ckpt["embedding_model"],
        "classifier_model_path": ckpt["classifier"],
        "pretrained_interpreter": ckpt["psi"],
        "base_channels": 2,
        "emb_dim": 64,
        "decoder_width": 16,
        "out_n_neurons": 5,
        "num_threads": threads,
        "single_sample": wav,
        "single_sample_output": out / "int.wav",
        "single_sample_chunk_s": chunk_s,
    }
    argv = [str(ROOT / "hparams" / "lmac_cnn14.yaml"), "--noprogressbar"]
    argv += [x for k, v in options.items() for x in (f"--{k}", str(v))]
    script = ROOT / "recipes" / "ESC50" / "interpret" / "eval.py"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(script), *argv], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1], "seconds": seconds}
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    frames = sf.info(str(out / "int.wav")).frames
    return {"peak_rss_gb": child["rss"] / 1e9, "seconds": seconds, "chunks": child["chunks"],
            "output_samples": frames}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_json", help="where to write the results (JSON)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--chunk_s", nargs="+", default=["5", "null"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ckpt").mkdir()
        ckpt = checkpoints(root / "ckpt")
        for minutes in args.minutes:
            wav = root / f"long_{minutes:g}min.wav"
            write_long_file(wav, minutes)
            for chunk_s in args.chunk_s:
                row = {"minutes": minutes, "chunk_s": chunk_s}
                row.update(run_case(root, ckpt, wav, chunk_s, args.threads))
                rows.append(row)
                print(json.dumps(row), flush=True)

    print(f"\n{'minutes':>8} {'chunk_s':>8} {'chunks':>7} {'peak RSS GB':>12} {'seconds':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['minutes']:>8g} {r['chunk_s']:>8} failed: {r['error']}")
            continue
        print(f"{r['minutes']:>8g} {r['chunk_s']:>8} {r['chunks']:>7} "
              f"{r['peak_rss_gb']:>12.2f} {r['seconds']:>8.1f}")  # fmt: skip
    result = {"rows": rows, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "threads": args.threads}  # fmt: skip
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
