#!/usr/bin/env python3
"""The whole story in one command: every classifier and interpreter on synthetic ESC-50, one report.

To run::

    python recipes/ESC50/run_demo.py [OUTPUT_FOLDER] [--size cpu|tiny|paper]
        [--device cpu|cuda:0] [--precision fp32|bf16] [--force]
    # (bash recipes/ESC50/run_demo.sh OUTPUT_FOLDER ... is the same command)

Every step is a recipe's entry point (``main(argv)``, the function ``python <recipe>.py
hparams.yaml --key value ...`` calls) with command-line overrides, run in this process:

1. ``prepare_synthetic.py``: 10 classes in ESC-50's layout, the ground-truth event stems, a
   WHAM!-format noise folder, and speech-like files in the LJSpeech-1.1 layout;
2. ``classification/train.py``: CNN14 (with WHAM! noise), FocalNet and ViT classifiers;
3. ``train_lmac.py``: L-MAC on the frozen CNN14 with WHAM! noise, with the bounded masked-out
   term (``--out_loss bounded``, ours: with the published term, L-MAC at the CPU budget learns
   masks shared by every clip; README, L-MAC); ``eval.py`` with the
   published protocol (validation fold; WHAM! in-domain, mixtures / LJSpeech / white noise
   out-of-domain) and on one file (``--single_sample``);
4. ``train_nmf.py`` + ``train_l2i.py`` (L2I) and ``train_piq.py`` (PIQ) on the same CNN14;
5. ``eval.py --eval_protocol ours --overlap_type mixtures`` for every interpreter on its
   classifier (L-MAC, L2I, PIQ, Saliency and Grad-CAM on CNN14, AMT on FocalNet and on ViT): the
   clean test fold and the same clips overlapped with another class's clip, so the report shows
   the same clips across methods side by side (``compare/<method>/{clean,mixtures}``);
6. ``python -m audio_interpretability.report``: ``report/index.html`` and ``report/summary.md``.

``--size cpu`` (default): the CPU sizes of README's table (minutes on a 2-core CPU); ``tiny``:
the smallest models and data, seconds per step (tests); ``paper``: the YAML defaults, i.e. the
paper configuration of every model (for a GPU: ``--device cuda --precision bf16``). A step whose
output exists is skipped (``--force`` reruns it), so an interrupted demo continues where it
stopped. The seconds per step are written to ``<OUTPUT_FOLDER>/demo_steps.json``.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path

__all__ = ["SIZES", "main", "steps"]

RECIPES = Path(__file__).resolve().parent
ROOT = RECIPES.parent.parent

A = shlex.split

#: The overrides of each size. ``data``: prepare_synthetic.py's arguments; ``cnn14``,
#: ``focalnet``, ``vit``: the model sizes (shared by the classifier and its interpreters);
#: ``*_train``: the training budgets.
SIZES = {
    "cpu": {
        "data": A("--n_classes 10 --clips_per_class_per_fold 8 --duration 2 --sample_rate 44100"),
        "speech": {"n_files": 8, "duration": 3.0},
        "cnn14": A("--base_channels 8 --emb_dim 256"),
        "decoder": A("--decoder_width 64"),
        "focalnet": A("--img_size 64 --embed_dim 24 --depths '[1, 1, 2, 1]'"),
        "vit": A("--img_size 64 --patch_size 8 --embed_dim 64 --depth 4 --num_heads 4"),
        "cnn14_train": A("--number_of_epochs 10 --batch_size 16 --lr 0.001 --augment_prob 0.5 "
                         "--lr_schedule plateau --num_threads 2"),
        "focalnet_train": A("--drop_path_rate 0.1 --number_of_epochs 13 --lr 0.001 "
                            "--augment_prob 0.5 --lr_schedule plateau --num_threads 2"),
        "vit_train": A("--drop_path_rate 0.1 --number_of_epochs 14 --lr 0.001 --augment_prob 0.5 "
                       "--lr_schedule plateau --num_threads 2"),
        "lmac_train": A("--number_of_epochs 15 --batch_size 8 --lr 0.005 --out_loss bounded"),
        "nmf": A("--sample_rate 16000 --K 20 --number_of_epochs 4 --batch_size 8 --lr 0.002 "
                 "--save_period 2"),
        "l2i": A("--K 20 --theta_frames 173"),
        "l2i_train": A("--number_of_epochs 2 --batch_size 8 --lr 0.0025"),
        "piq": A("--K 256"),
        "piq_train": A("--number_of_epochs 2 --batch_size 8 --lr 0.005"),
        "eval": A("--batch_size 8 --n_saved_interpretations 4 --n_saved_per_class 1"),
    },
    "tiny": {
        "data": A("--n_classes 3 --clips_per_class_per_fold 2 --duration 1 --sample_rate 16000"),
        "speech": {"n_files": 2, "duration": 1.5},
        "cnn14": A("--base_channels 4 --emb_dim 128"),
        "decoder": A("--decoder_width 8"),
        "focalnet": A("--img_size 32 --embed_dim 8 --depths '[1, 1, 1, 1]'"),
        "vit": A("--img_size 32 --patch_size 8 --embed_dim 16 --depth 1 --num_heads 2"),
        "cnn14_train": A("--number_of_epochs 1 --batch_size 4 --lr 0.001 --lr_schedule plateau"),
        "focalnet_train": A("--number_of_epochs 1 --batch_size 4 --lr 0.001 --lr_schedule plateau"),
        "vit_train": A("--number_of_epochs 1 --batch_size 4 --lr 0.001 --lr_schedule plateau"),
        "lmac_train": A("--number_of_epochs 1 --batch_size 4 --lr 0.005 --out_loss bounded"),
        "nmf": A("--sample_rate 16000 --K 4 --number_of_epochs 1 --batch_size 4 --lr 0.002 "
                 "--save_period 1"),
        "l2i": A("--K 4 --theta_frames 87"),
        "l2i_train": A("--number_of_epochs 1 --batch_size 4 --lr 0.0025"),
        "piq": A("--K 16"),
        "piq_train": A("--number_of_epochs 1 --batch_size 4 --lr 0.005"),
        "eval": A("--batch_size 4 --n_saved_interpretations 2 --n_saved_per_class 1"),
    },
}  # fmt: skip
#: The paper configuration: the YAML defaults for the models and budgets (data: as ``cpu``).
SIZES["paper"] = {
    **{key: [] for key in SIZES["cpu"]},
    "data": SIZES["cpu"]["data"],
    "speech": SIZES["cpu"]["speech"],
    "l2i": A("--theta_frames 173"),  # the frames of a 2 s clip (the YAML's: 5 s)
    "lmac_train": A("--out_loss bounded"),  # as at the other sizes
    "nmf": A("--sample_rate 16000"),  # the classifiers' rate (NMF is fit on their STFT)
    # the published cyclic schedule starts at 1e-8 and needs 65000 steps to ramp up
    "cnn14_train": A("--lr_schedule plateau"),
    "focalnet_train": A("--lr_schedule plateau"),
    "vit_train": A("--lr_schedule plateau"),
}


def _load(relative: str):
    """Import a recipe script (e.g. ``interpret/eval.py``) as a module."""
    path = RECIPES / relative
    name = "_demo_" + relative.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _speech(folder: str, n_files: int, duration: float) -> None:
    from audio_interpretability.data.ood import generate_speech_like

    generate_speech_like(folder, n_files=n_files, duration=duration, sample_rate=22050,
                         ljspeech_layout=True)  # fmt: skip


def _report(root: str) -> None:
    from audio_interpretability import report

    report.main([root])


def steps(out: str, size: str = "cpu", run_options: list[str] | None = None) -> list[tuple]:
    """The demo's steps: ``(name, callable, argv, output that marks the step done)``.

    Arguments
    ---------
    out : str
        The output folder.
    size : str
        A key of :data:`SIZES`.
    run_options : list of str
        SpeechBrain run options given to every recipe (``--device``, ``--precision``).

    Returns
    -------
    list of tuple
        In order; ``callable(argv)`` runs the step.

    Example
    -------
    >>> [s[0] for s in steps("demo")][:4]
    ['data', 'speech', 'classifier_cnn14', 'classifier_focalnet']
    """
    z = SIZES[size]
    ro = list(run_options or [])
    data, wham, clf = f"{out}/synth10", f"{out}/wham_noise", f"{out}/pretrained"
    cache = ["--cache_folder", f"{out}/audio_cache"]
    n_classes = z["data"][z["data"].index("--n_classes") + 1]
    common = ["--data_folder", data, "--out_n_neurons", n_classes, *cache, *ro]
    noise = ["--add_wham_noise", "True", "--wham_folder", wham]
    cnn14 = ["--pretrained_classifier_folder", f"{clf}/cnn14", *z["cnn14"]]
    lmac = [*cnn14, *z["decoder"]]
    nmf_ckpt = f"{out}/nmf/save/nmf_decoder.ckpt"
    l2i = [*cnn14, *z["l2i"], "--nmf_decoder_path", nmf_ckpt]
    piq = [*cnn14, *z["piq"]]
    quiet = ["--interpret_period", "0"]  # figures of the test clips only (the report's)
    train, evaluate = _load("classification/train.py").main, _load("interpret/eval.py").main
    h = "hparams/"
    result = [
        (
            "data",
            _load("prepare_synthetic.py").main,
            ["--output_folder", data, *z["data"], "--seed", "0", "--wham_folder", wham],
            f"{data}/meta/esc50.csv",
        ),
        (
            "speech",
            lambda a: _speech(a[0], **z["speech"]),
            [f"{out}/LJSpeech-1.1"],
            f"{out}/LJSpeech-1.1/metadata.csv",
        ),
    ]
    for model in ("cnn14", "focalnet", "vit"):
        argv = [h + f"classifier_{model}.yaml", *common, *z[model], *z[f"{model}_train"],
                "--output_folder", f"{out}/classifier_{model}",
                "--pretrained_folder", f"{clf}/{model}"]  # fmt: skip
        if model == "cnn14":  # L-MAC trains with WHAM! noise: its classifier must hear through it
            argv += noise
        result.append((f"classifier_{model}", train, argv, f"{clf}/{model}/classifier.ckpt"))
    psi = f"{out}/lmac/save/psi_model.ckpt"
    result += [
        ("lmac", _load("interpret/train_lmac.py").main,
         [h + "lmac_cnn14.yaml", *common, *lmac, *noise, *z["lmac_train"], *quiet,
          "--output_folder", f"{out}/lmac"], f"{out}/lmac/clean/test_metrics.json"),
        ("lmac_eval", evaluate,
         [h + "lmac_cnn14.yaml", *common, *lmac, *noise, *z["eval"], "--pretrained_interpreter",
          psi, "--overlap_type", "all", "--ljspeech_path", f"{out}/LJSpeech-1.1",
          "--output_folder", f"{out}/lmac_eval"], f"{out}/lmac_eval/eval_metrics.json"),
        ("lmac_single_file", evaluate,
         [h + "lmac_cnn14.yaml", *common, *lmac, "--pretrained_interpreter", psi,
          "--output_folder", f"{out}/lmac_single_file", "--single_sample",
          f"{out}/LJSpeech-1.1/wavs/LJ001-0001.wav"],
         f"{out}/lmac_single_file/hyperparams.yaml"),
        ("nmf", _load("interpret/train_nmf.py").main,
         [h + "nmf.yaml", "--data_folder", data, *cache, *ro, *z["nmf"],
          "--output_folder", f"{out}/nmf"], nmf_ckpt),
        ("l2i", _load("interpret/train_l2i.py").main,
         [h + "l2i_cnn14.yaml", *common, *l2i, *z["l2i_train"], *quiet, "--output_folder", f"{out}/l2i"],
         f"{out}/l2i/test_metrics.json"),
        ("piq", _load("interpret/train_piq.py").main,
         [h + "piq_cnn14.yaml", *common, *piq, *z["piq_train"], *quiet, "--output_folder", f"{out}/piq"],
         f"{out}/piq/test_metrics.json"),
    ]  # fmt: skip
    compared = {
        "L-MAC": ["lmac_cnn14.yaml", *lmac, "--pretrained_interpreter", psi],
        "L2I": ["l2i_cnn14.yaml", *l2i, "--pretrained_interpreter",
                f"{out}/l2i/save/psi_model.ckpt"],
        "PIQ": ["piq_cnn14.yaml", *piq, "--pretrained_interpreter",
                f"{out}/piq/save/psi_model.ckpt"],
        "Saliency": ["gradient_cnn14.yaml", *cnn14, "--int_method", "saliency"],
        "Grad-CAM": ["gradient_cnn14.yaml", *cnn14, "--int_method", "gradcam"],
        "AMT-FocalNet": ["amt_focalnet.yaml", "--pretrained_folder", f"{clf}/focalnet",
                         *z["focalnet"]],
        "AMT-ViT": ["amt_vit.yaml", "--pretrained_folder", f"{clf}/vit", *z["vit"]],
    }  # fmt: skip
    for method, (yaml, *args) in compared.items():
        folder = f"{out}/compare/{method}"
        argv = [h + yaml, *common, *args, *z["eval"], "--eval_protocol", "ours",
                "--overlap_type", "mixtures", "--output_folder", folder]  # fmt: skip
        result.append((f"compare_{method}", evaluate, argv, f"{folder}/eval_metrics.json"))
    result.append(("report", lambda a: _report(a[0]), [out], None))
    return result


def main(argv: list[str] | None = None) -> dict:
    """Run the demo; ``argv`` defaults to ``sys.argv[1:]``. Returns ``{step: seconds}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_folder", nargs="?", default="results/demo")
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu",
                        help="cpu: README's CPU sizes (default); tiny: tests; paper: the YAMLs")  # fmt: skip
    parser.add_argument("--device", default=None, help="e.g. cuda:0 (default: the CPU)")
    parser.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--force", action="store_true", help="rerun the steps already done")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.output_folder)
    cwd = os.getcwd()
    os.chdir(ROOT)  # the recipes' hparams/ paths; back to cwd at the end
    try:
        return _run(out, args)
    finally:
        os.chdir(cwd)


def _run(out: str, args: argparse.Namespace) -> dict:
    os.makedirs(out, exist_ok=True)
    run_options = []
    if args.device:
        run_options += ["--device", args.device]
    if args.precision:
        run_options += ["--precision", args.precision]
    todo = steps(out, args.size, run_options)
    timings_file = Path(out) / "demo_steps.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    start = time.perf_counter()
    for i, (name, function, step_argv, done) in enumerate(todo, 1):
        if done and os.path.exists(done) and not args.force:
            print(f"[demo {i}/{len(todo)}] {name}: done already ({done})", flush=True)
            continue
        print(f"[demo {i}/{len(todo)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        function(step_argv)
        timings[name] = round(time.perf_counter() - t0, 1)
        timings_file.write_text(json.dumps(timings, indent=2) + "\n")
        print(f"[demo {i}/{len(todo)}] {name}: {timings[name]} s", flush=True)
    total = time.perf_counter() - start
    print(f"Demo done in {total / 60:.1f} min (seconds per step: {timings_file}).")
    print(f"Report: {out}/report/index.html (summary.md beside it)")
    return timings


if __name__ == "__main__":
    main()
