"""Throughput and peak memory of one L-MAC training batch and one evaluation batch.

Paper configuration: CNN14 at full width (base 64, emb_dim 2048, 50 classes), the full-width
decoder (SpeechBrain's ``CNN14PSI_stft(2048)``, 236 M parameters), 5 s clips at 16 kHz, batch 2.

Two implementations are timed, each configuration in its own subprocess so that peak memory
(``ru_maxrss`` on CPU, ``max_memory_allocated`` on CUDA) is measured separately:

* ``ours``: :class:`audio_interpretability.brains.lmac.LMAC` built from
  ``hparams/lmac_cnn14.yaml`` (``fit_batch`` / ``evaluate_batch`` of the Brain, every metric
  included in evaluation, the random-mask baseline off as the published recipe has none);
* ``published``: a re-implementation of the published SpeechBrain recipe's step with
  SpeechBrain's own modules (``Cnn14``, ``CNN14PSI_stft``, ``STFT``, ``Filterbank``): three
  separate classifier passes per training step, and in evaluation the interpretation recomputed
  for the metrics (the decoder runs three times per batch). Its classifier is frozen too, which
  makes it faster than the original (that one also back-propagates into CNN14's weights).

``--config tiny`` runs ours only on a small CNN14 and decoder, seconds per configuration: a
dry run of the benchmark's flow (``benchmarks/run_gpu.sh`` with ``CONFIG=tiny``, tested).

Usage::

    python benchmarks/bench_lmac.py results/bench/lmac_cpu.json
    python benchmarks/bench_lmac.py results/bench/lmac_gpu.json --device cuda --precision bf16

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from perf_table import KEPT_THRESHOLD  # noqa: E402  (what counts as freed memory kept)

SAMPLE_RATE = 16000


def _batch(batch_size: int, seconds: float, device: str):
    """A PaddedBatch like the data pipeline's: ids, waveforms, labels."""
    from speechbrain.dataio.batch import PaddedBatch

    gen = torch.Generator().manual_seed(0)
    n = int(seconds * SAMPLE_RATE)
    items = []
    for i in range(batch_size):
        wav = torch.randn(n, generator=gen) * 0.1
        items.append(
            {
                "id": f"clip{i}",
                "sig": wav / wav.abs().max(),
                "class_string_encoded": torch.tensor([i]),
            }
        )
    return PaddedBatch(items).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _ours(stage: str, args):
    """The step of our LMAC Brain (a function; ``step.brain`` is the Brain)."""
    import speechbrain as sb
    from hyperpyyaml import load_hyperpyyaml

    out = tempfile.mkdtemp(prefix="bench_lmac_")
    overrides = {
        "data_folder": out,
        "output_folder": out,
        "base_channels": 64,
        "emb_dim": 2048,
        "decoder_width": None,
        "out_n_neurons": 50,
        "embedding_model_path": None,
        "classifier_model_path": None,
        "random_baseline": False,
        "save_interpretations": False,
        "num_threads": 0,
    }
    if args.config == "tiny":  # a CNN14 of base 2 and a width-16 decoder: seconds per step
        overrides.update(base_channels=2, emb_dim=64, decoder_width=16)
    overrides.update(json.loads(args.ours_overrides))
    with open(REPO / "hparams" / "lmac_cnn14.yaml") as f:
        hparams = load_hyperpyyaml(f, overrides)
    from audio_interpretability.brains.lmac import LMAC

    brain = LMAC(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": args.device, "precision": args.precision, "noprogressbar": True},
        checkpointer=hparams["checkpointer"],
    )
    batch = _batch(args.batch_size, args.seconds, args.device)
    if stage == "train":
        brain.on_fit_start()
        brain.on_stage_start(sb.Stage.TRAIN, 1)
        brain.modules.train()

        def step():
            return brain.fit_batch(batch)

    else:
        brain.on_stage_start(sb.Stage.TEST)
        brain.modules.eval()

        def step():
            return brain.evaluate_batch(batch, sb.Stage.TEST)

    step.brain = brain  # for the scripts that look at the models (memory_floor.py)
    return step


def _published(stage: str, args):
    """(step function) re-implementing the published recipe's L-MAC step."""
    from speechbrain.lobes.models.Cnn14 import Cnn14, CNN14PSI_stft
    from speechbrain.nnet.linear import Linear
    from speechbrain.processing.features import STFT, Filterbank, spectral_magnitude

    device = args.device
    stft = STFT(sample_rate=SAMPLE_RATE, n_fft=1024, win_length=23.2199, hop_length=11.6099)
    fbank = Filterbank(n_mels=80, n_fft=1024, sample_rate=SAMPLE_RATE, log_mel=False).to(device)
    embedding_model = Cnn14(mel_bins=80, emb_dim=2048, return_reps=True).to(device).eval()
    classifier = Linear(input_size=2048, n_neurons=50).to(device).eval()
    for module in (embedding_model, classifier):
        module.requires_grad_(False)
    psi = CNN14PSI_stft(dim=2048, outdim=1).to(device)
    optimizer = torch.optim.Adam(psi.parameters(), lr=2e-4, weight_decay=2e-6)
    wavs = _batch(args.batch_size, args.seconds, device).sig.data
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    amp = torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None)

    def preprocess(w):
        X_stft = stft(w)
        power = spectral_magnitude(X_stft, power=0.5)
        return torch.log1p(power), torch.log1p(fbank(power))

    def classifier_forward(mel):
        emb, hcat = embedding_model(mel)
        return hcat, classifier(emb).squeeze(1)

    def interpret(w):  # interpret_computation_steps of the published recipe
        X, mel = preprocess(w)
        hcat, predictions = classifier_forward(mel)
        xhat = torch.sigmoid(psi(hcat).squeeze(1))
        X = X[:, : xhat.shape[1]]
        return xhat, X, predictions

    def masked_logits(X):
        return classifier_forward(torch.log1p(fbank(torch.expm1(X))))[1]

    def loss_of(xhat, X, predictions):
        target = predictions.argmax(1)
        l_in = F.nll_loss(masked_logits(xhat * X).log_softmax(1), target)
        l_out = -F.nll_loss(masked_logits((1 - xhat) * X).log_softmax(1), target)
        return 4 * l_in + 0.2 * l_out + 0.4 * xhat.abs().mean()

    if stage == "train":
        psi.train()

        def step():
            with amp:
                loss = loss_of(*interpret(wavs))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        return step
    psi.eval()

    @torch.no_grad()
    def step():
        with amp:
            xhat, X, predictions = interpret(wavs)
            loss_of(xhat, X, predictions)
            for _ in range(2):  # metrics recompute the interpretation (decoder runs 3x in all)
                xhat2, X2, predictions2 = interpret(wavs)
                masked_logits(xhat2 * X2).softmax(1)

    return step


def _mmap_threshold(impl: str) -> int:
    """glibc's mmap threshold in this child, in bytes (0: glibc's default): ours gets the one
    our package sets when imported, the re-implementation the environment's."""
    if impl == "ours":
        import audio_interpretability

        return audio_interpretability.MMAP_THRESHOLD_SET
    return int(os.environ.get("MALLOC_MMAP_THRESHOLD_", "0"))


def child(args) -> dict:
    """Time one (implementation, stage) configuration in this process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    step = (_ours if args.impl == "ours" else _published)(args.stage, args)
    times = []
    for i in range(args.warmup + args.iters):
        _sync(args.device)
        start = time.perf_counter()
        step()
        _sync(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    result = {
        "impl": args.impl,
        "stage": args.stage,
        "precision": args.precision,
        "device": args.device,
        "batch_size": args.batch_size,
        "seconds_per_batch": seconds,
        "clips_per_s": args.batch_size / seconds,
        "all_times": times,
        # GiB (ru_maxrss is in KiB), as peak_cuda_gb; the key keeps its first name
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        "mmap_threshold": _mmap_threshold(args.impl),
    }
    if args.device.startswith("cuda"):
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    if args.flops:  # one more step, counted (after the timing and the memory peak)
        result.update(flop_figures(step, seconds, args))
    return result


def count_flops(step):
    """Run ``step`` once under ``torch.utils.flop_counter`` (matmuls and convolutions,
    forward and backward); returns the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    def addmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    # the in-place addmm_ (our decoder's weight gradients, sample by sample) is its own
    # operator, which the counter's table lacks
    mapping = {torch.ops.aten.addmm_: addmm_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step()
    return counter


def flop_figures(step, seconds: float, args) -> dict:
    """Model FLOPs of one step (:func:`count_flops`), per clip, the rate reached and, with
    ``--peak_tflops``, its fraction of the device's peak."""
    flops = count_flops(step).get_total_flops()
    figures = {"flops_per_clip": flops / args.batch_size, "tflops_per_s": flops / seconds / 1e12}
    if args.peak_tflops:
        figures["fraction_of_peak"] = figures["tflops_per_s"] / args.peak_tflops
    return figures


def _run_child(args, impl: str, stage: str, flops: int) -> dict:
    """Time one (implementation, stage) in a fresh process; print and return its result."""
    cmd = [sys.executable, __file__, args.output, "--impl", impl, "--stage", stage]
    for key in (
        "device",
        "precision",
        "batch_size",
        "seconds",
        "iters",
        "warmup",
        "threads",
        "peak_tflops",
        "ours_overrides",
        "config",
    ):
        cmd += [f"--{key}", str(getattr(args, key))]
    cmd += ["--flops", str(flops)]
    env = os.environ.copy()
    settings = args.huge_pages == "both" or (args.huge_pages == "ours" and impl == "ours")
    env["THP_MEM_ALLOC_ENABLE"] = "1" if settings else "0"  # read when torch loads
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    from audio_interpretability import MMAP_THRESHOLD_DEFAULT, MMAP_THRESHOLD_ENV

    if impl == "ours":  # our package sets its threshold when imported, unless told 0
        if not settings:
            env[MMAP_THRESHOLD_ENV] = "0"
        # else its default, or the AUDIO_INTERPRETABILITY_MMAP_THRESHOLD given to this script
    elif settings:  # the threshold ours gets, for the re-implementation through glibc's variable
        threshold = int(env.get(MMAP_THRESHOLD_ENV, MMAP_THRESHOLD_DEFAULT))
        if threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(threshold)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl}/{stage} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    mem = r.get("peak_cuda_gb", r["peak_rss_gb"])
    rate = f"  {r['tflops_per_s']:7.3f} TFLOP/s" if "tflops_per_s" in r else ""
    if "fraction_of_peak" in r:
        rate += f" ({100 * r['fraction_of_peak']:.1f} % of peak)"
    print(
        f"{impl:10s} {stage:5s} {args.precision:5s} batch {args.batch_size:3d} "
        f"{r['seconds_per_batch']:8.2f} s/batch {r['clips_per_s']:7.2f} clips/s  "
        f"peak {mem:5.2f} GiB{rate}{'  huge pages' if r['huge_pages'] else ''}"
        f"{'  freed memory kept' if r.get('mmap_threshold', 0) >= KEPT_THRESHOLD else ''}",
        flush=True,
    )
    return r


def _merge_rounds(runs: list, peak_tflops: float = 0.0) -> list:
    """One result per (implementation, stage): the median over every timed batch of every
    round, the largest peak memory, the FLOP figures of the round that counted them."""
    merged = {}
    for r in runs:
        key = (r["impl"], r["stage"])
        if key not in merged:
            merged[key] = {**r, "rounds": 1, "round_seconds": [r["seconds_per_batch"]]}
            continue
        m = merged[key]
        m["rounds"] += 1
        m["round_seconds"].append(r["seconds_per_batch"])
        m["all_times"] = m["all_times"] + r["all_times"]
        for mem in ("peak_rss_gb", "peak_cuda_gb"):
            if mem in r:
                m[mem] = max(m[mem], r[mem])
    for m in merged.values():
        m["seconds_per_batch"] = sorted(m["all_times"])[len(m["all_times"]) // 2]
        m["clips_per_s"] = m["batch_size"] / m["seconds_per_batch"]
        if "flops_per_clip" in m:  # the rate at the merged time
            m["tflops_per_s"] = (
                m["flops_per_clip"] * m["batch_size"] / m["seconds_per_batch"] / 1e12
            )
            if peak_tflops:
                m["fraction_of_peak"] = m["tflops_per_s"] / peak_tflops
    return list(merged.values())


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="JSON file for the results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--impls", default="ours,published")
    parser.add_argument("--stages", default="train,eval")
    parser.add_argument("--flops", type=int, default=1, help="1: count FLOPs of one step")
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=0.0,
        help="the device's peak TFLOP/s at this precision (e.g. 989 for an H100 / H200 in "
        "dense bf16) to report the fraction reached; 0: not reported",
    )
    parser.add_argument(
        "--ours_overrides",
        default="{}",
        help="lmac_cnn14.yaml keys for ours, as JSON, e.g. '{\"decoder_gemm_conv\": false}'",
    )
    parser.add_argument(
        "--huge_pages",
        default="ours",
        choices=["ours", "both", "none"],
        help="our package's allocator settings, tensors on transparent huge pages "
        "(THP_MEM_ALLOC_ENABLE=1) and freed memory kept for reuse (glibc's mmap threshold at "
        "1 GiB), for: ours only, as each recipe ships (our package turns them on, the published "
        "recipe does not); both (the same environment); none",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every configuration this many times, each round in the reverse order of "
        "the implementations (ours, published, then published, ours), so that a machine "
        "drifting over the run slows both alike; the figures are the median of every round",
    )
    parser.add_argument(
        "--config",
        default="paper",
        choices=["paper", "tiny"],
        help="paper: the paper configuration; tiny: ours only, a CNN14 of base 2 and a "
        "width-16 decoder (a dry run of the benchmark's flow, e.g. run_gpu.sh on a CPU)",
    )
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.impl:  # child process
        print(json.dumps(child(args)))
        return []
    if args.config == "tiny" and "published" in args.impls.split(","):
        parser.error(
            "--config tiny times ours only (the published step is built from SpeechBrain's "
            "full-size Cnn14 and CNN14PSI_stft): pass --impls ours"
        )
    runs = []
    impls = args.impls.split(",")
    for rnd in range(args.rounds):  # each round reverses the order of the implementations
        for impl in impls if rnd % 2 == 0 else impls[::-1]:
            for stage in args.stages.split(","):
                runs.append(_run_child(args, impl, stage, args.flops if rnd == 0 else 0))
    results = _merge_rounds(runs, args.peak_tflops)
    if args.rounds > 1:
        for r in results:
            print(
                f"{r['impl']:10s} {r['stage']:5s} {args.rounds} rounds: median "
                f"{r['seconds_per_batch']:.2f} s/batch over {len(r['all_times'])} batches"
            )
    by = {(r["impl"], r["stage"]): r["seconds_per_batch"] for r in results}
    for stage in args.stages.split(","):
        if ("ours", stage) in by and ("published", stage) in by:
            print(f"speed-up {stage}: {by[('published', stage)] / by[('ours', stage)]:.2f}x")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
