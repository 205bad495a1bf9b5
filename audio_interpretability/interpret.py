"""Interpret audio files from the command line with a trained interpreter.

To run::

    # an output folder of a recipe run (train_lmac.py, eval.py, interpret_amt.py, ...)
    python -m audio_interpretability.interpret dog.wav rain.flac --interpreter results/LMAC_cnn14/1234
    # or the checkpoints and the YAML they were trained with (a name in hparams/ or a path)
    python -m audio_interpretability.interpret dog.wav --hparams lmac_cnn14.yaml \
        --embedding_model_path E.ckpt --classifier_model_path C.ckpt \
        --pretrained_interpreter psi_model.ckpt [--override base_channels=8 ...]
    # options: --out DIR (default interpretations/), --device cuda:0, --chunk_s 5

For each file: ``<out>/<stem>_interpretation.wav`` (the listenable interpretation, at the
model's rate), ``.png`` (the figure) and ``.json`` (the prediction, per chunk for long files),
and one line on stdout: the file, the predicted class, its probability and the written paths.
A file that cannot be read (missing, a directory, corrupt, truncated, NaN / Inf samples) is
reported on stderr and skipped; the exit status is then 1. Files go through
:meth:`audio_interpretability.api.Interpreter.interpret_file_to` (the memory of one chunk).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["main", "parse_args"]


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m audio_interpretability.interpret",
        description="Interpret audio files with a trained interpreter (AMT, L-MAC, L2I, PIQ, "
        "gradient baselines): one interpretation WAV, figure and JSON per file.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (any rate)")
    parser.add_argument(
        "--interpreter", metavar="FOLDER", help="output folder of a recipe run (hyperparams.yaml)"
    )
    parser.add_argument("--hparams", metavar="YAML", help="instead: a YAML path or hparams/ name")
    parser.add_argument("--embedding_model_path", metavar="CKPT")
    parser.add_argument("--classifier_model_path", metavar="CKPT")
    parser.add_argument("--pretrained_interpreter", metavar="CKPT", help="psi_model.ckpt")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a YAML key (value parsed as YAML, e.g. base_channels=8); repeatable",
    )
    parser.add_argument("--out", default="interpretations", metavar="DIR", help="output folder")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--chunk_s",
        type=float,
        default=None,
        help="chunk length of long files in seconds (default: the YAML's single_sample_chunk_s)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (args.interpreter is None) == (args.hparams is None):
        parser.error("pass --interpreter FOLDER or --hparams YAML (with the checkpoint paths)")
    return args


def _overrides(pairs: list[str]) -> dict:
    """``["a=1", "b=[1, 2]"]`` -> ``{"a": 1, "b": [1, 2]}`` (values read as YAML).

    Example
    -------
    >>> _overrides(["base_channels=8", "depths=[1, 1]", "name=x"])
    {'base_channels': 8, 'depths': [1, 1], 'name': 'x'}
    """
    import yaml

    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--override takes KEY=VALUE, got {pair!r}")
        values[key.strip()] = yaml.safe_load(value)
    return values


def _unique_names(files: list[str]) -> list[str]:
    """Output stems ``<stem>_interpretation``, numbered when two files share a stem.

    Example
    -------
    >>> _unique_names(["a/x.wav", "b/x.flac", "y.wav"])
    ['x_interpretation', 'x_interpretation_2', 'y_interpretation']
    """
    seen: dict[str, int] = {}
    names = []
    for path in files:
        stem = f"{Path(path).stem}_interpretation"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def main(argv=None) -> int:
    """Run the command; returns the exit status (0: every file interpreted, 1: some failed)."""
    from tqdm import tqdm

    from audio_interpretability.api import load_interpreter
    from audio_interpretability.data.audio import AudioError

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("speechbrain").setLevel(logging.WARNING)  # its start-up INFO lines
    interpreter = load_interpreter(
        args.interpreter,
        hparams_file=args.hparams,
        embedding_model_path=args.embedding_model_path,
        classifier_model_path=args.classifier_model_path,
        pretrained_interpreter=args.pretrained_interpreter,
        overrides=_overrides(args.override),
        device=args.device,
    )
    failed = []
    names = _unique_names(args.files)
    bar = tqdm(args.files, unit="file", disable=args.no_progress, file=sys.stderr)
    for path, name in zip(bar, names):
        try:
            result = interpreter.interpret_file_to(path, args.out, name, args.chunk_s)
        except (AudioError, FileNotFoundError, IsADirectoryError) as err:
            failed.append(path)
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            tqdm.write(f"error: {message}", file=sys.stderr)
            continue
        tqdm.write(
            f"{path}: {result.predicted_class} (index {result.predicted_index}, "
            f"p = {result.probability:.3f}) -> {result.wav_path}, {result.png_path}, "
            f"{result.json_path}",
            file=sys.stdout,
        )
    bar.close()
    if failed:
        print(
            f"{len(failed)} of {len(args.files)} file(s) failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
