"""Forward + backward time of each layer of L-MAC's full-width decoder: ours against oneDNN.

For each of ``convt1`` .. ``convt9`` of ``CNN14Decoder(2048)`` (the published
``CNN14PSI_stft``, 236 M parameters) on the input it gets from a 5 s clip, times the layer as
our decoder runs it on the CPU (:class:`~audio_interpretability.models.decoders.GemmConvTranspose2d`:
matrix products and fold) and as ``torch.nn.ConvTranspose2d`` (oneDNN), forward and backward
(the input gradient where the training step needs it: every layer that reads another layer's
output), best of ``--iters`` after one warm-up. Then ``convt8`` and ``convt9`` merged into
one transposed convolution, as our decoder runs them
(:func:`~audio_interpretability.models.decoders.linear_tail`), against oneDNN's two layers one
after the other, and the decoder's total as it runs. Prints a Markdown table and writes JSON.

Usage::

    python benchmarks/bench_decoder_layers.py results/bench/decoder_layers_b2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# (input channels, frames, frequency) of each layer's input for a 5 s clip (431 STFT frames)
INPUTS = {
    "convt1": (2048, 13, 2),
    "convt2": (1024, 13, 2),
    "convt3": (2048, 25, 5),
    "convt4": (512, 26, 5),
    "convt5": (2048, 53, 18),
    "convt6": (256, 53, 10),
    "convt7": (1024, 105, 37),
    "convt8": (512, 210, 65),
    "convt9": (256, 421, 128),
}
READS_A_LAYER = ("convt3", "convt5", "convt7", "convt8", "convt9")  # need the input gradient


def time_layer(layer, x: torch.Tensor, forward, input_grad: bool, iters: int) -> float:
    """Best seconds of forward + backward (weights, bias and, if asked, the input)."""
    times = []
    for i in range(iters + 1):
        inp = x.detach().requires_grad_(input_grad)
        start = time.perf_counter()
        out = forward(layer, inp)
        out.backward(torch.ones_like(out))
        if i:
            times.append(time.perf_counter() - start)
        layer.zero_grad(set_to_none=True)
    return min(times)


def _row(name: str, row: dict) -> str:
    if "onednn_s" not in row:
        return f"| {name} | {row['ours_s']:.3f} | | |"
    return f"| {name} | {row['ours_s']:.3f} | {row['onednn_s']:.3f} | {row['onednn_s'] / row['ours_s']:.2f}x |"


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="JSON file for the results")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--onednn", type=int, default=1, help="1: time torch.nn.ConvTranspose2d too; 0: ours only"
    )
    args = parser.parse_args(argv)
    if min(args.batch_size, args.iters, args.threads) < 1:
        parser.error("--batch_size, --iters and --threads must be at least 1")
    sys.path.insert(0, str(REPO))
    from audio_interpretability.models.decoders import CNN14Decoder, linear_tail

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    decoder = CNN14Decoder(2048)
    rows = []
    print("| layer | ours s | oneDNN s | oneDNN / ours |\n| --- | --- | --- | --- |")
    for name, (channels, frames, freq) in INPUTS.items():
        layer = getattr(decoder, name)
        x = torch.randn(args.batch_size, channels, frames, freq)
        grad = name in READS_A_LAYER
        ours = time_layer(layer, x, type(layer).forward, grad, args.iters)
        row = {"layer": name, "ours_s": ours}
        if args.onednn:
            row["onednn_s"] = time_layer(
                layer, x, torch.nn.ConvTranspose2d.forward, grad, args.iters
            )
        rows.append(row)
        print(_row(name, row), flush=True)
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k.endswith("_s")}
    print(_row("all, layer by layer", total))
    # convt8 then convt9 (no nonlinearity between them) as one transposed convolution
    tail = torch.nn.ModuleList([decoder.convt8, decoder.convt9])
    x = torch.randn(args.batch_size, *INPUTS["convt8"])
    merged = {"layer": "convt8 + convt9 merged (linear_tail)"}
    merged["ours_s"] = time_layer(
        tail, x, lambda t, inp: linear_tail(t[0], t[1], inp), True, args.iters
    )
    if args.onednn:
        plain = torch.nn.ConvTranspose2d.forward
        merged["onednn_s"] = time_layer(
            tail, x, lambda t, inp: plain(t[1], plain(t[0], inp)), True, args.iters
        )
    print(_row(merged["layer"], merged))
    unmerged = sum(r["ours_s"] for r in rows if r["layer"] not in ("convt8", "convt9"))
    as_run = {"ours_s": unmerged + merged["ours_s"]}
    if args.onednn:
        as_run["onednn_s"] = total["onednn_s"]
    print(_row("all, as the decoder runs (ours with the merged tail)", as_run))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"config": vars(args), "layers": rows, "total": total, "merged_tail": merged}
    out.write_text(json.dumps({**result, "as_run": as_run}, indent=2))
    return rows


if __name__ == "__main__":
    main()
