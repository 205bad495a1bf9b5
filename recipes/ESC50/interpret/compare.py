#!/usr/bin/env python3
"""Which interpreter should I trust? Every interpreter on one classifier and one data set.

To run::

    python recipes/ESC50/interpret/compare.py hparams/compare.yaml --data_folder D \
        --out_n_neurons N --embedding_model_path E --classifier_model_path C --output_folder O
    # a CPU-size CNN14 (as trained by classifier_cnn14.yaml's CPU command):
    ... --classifier_overrides "{base_channels: 8, emb_dim: 256}"
    # other methods (or checkpoints of trained ones):
    ... --methods "[{name: L-MAC, yaml: lmac_cnn14.yaml, int_method: lmac,
                     pretrained_interpreter: results/LMAC_cnn14/1234/save/psi_model.ckpt}]"

For each method of ``methods`` (compare.yaml), with the classifier's checkpoints and sizes
(``classifier_overrides``) given to its own YAML:

1. a trainable method (L-MAC, L2I, PIQ) without ``pretrained_interpreter`` is trained by its
   own recipe (``train_lmac.py`` / ``train_l2i.py`` / ``train_piq.py``: the ``main(argv)`` of
   the script named by the Brain's ``train_script``) for ``number_of_epochs`` into
   ``O/<name>/train/``; L2I's NMF dictionary first, by ``train_nmf.py``, when the method has
   ``nmf_overrides`` and its overrides no ``nmf_decoder_path``;
2. ``eval.py`` (its ``main(argv)``) evaluates it into ``O/<name>/eval/<setting>/`` (the test
   fold clean, with WHAM! when ``wham_folder`` is given, and each ``overlap_type``), with the
   random-mask baseline (``random_*`` keys);
3. the sanity checks of :mod:`audio_interpretability.sanity` on ``n_sanity_clips`` test
   clips spread over the test fold: deletion / insertion AUC (and a random order's) and the
   cascading randomisation of the classifier (Spearman / SSIM of the masks per stage).

Outputs: ``O/comparison.json`` (everything), ``O/comparison.md`` (one table per setting: a row
per method and the random mask, columns in docs/COMPARE.md) and ``O/masks.png`` (each method's
mask of the same ``n_figure_clips`` clips, side by side). Steps whose outputs exist are not
run again (``--rerun True`` reruns them). Bad input (missing classifier checkpoint, unknown
method, missing YAML or interpreter checkpoint) fails before any work.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from audio_interpretability import sanity
from audio_interpretability.api import build_interpreter, check_interpreter
from audio_interpretability.brains import INTERPRETERS, interpreter_class
from audio_interpretability.brains.trainable import PSI_FILE, TrainableInterpreterBrain
from audio_interpretability.recipe_utils import load_recipe, prepare_datasets

__all__ = [
    "COLUMNS",
    "Method",
    "check_methods",
    "comparison_table",
    "main",
    "plot_masks",
    "run_sanity_checks",
]

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

#: Table columns: (key in test_metrics.json or the sanity results, label, better).
COLUMNS = [
    ("fid_in", "Fid-In", "higher"),
    ("FF", "FF", "higher"),
    ("AI", "AI %", "higher"),
    ("AD", "AD %", "lower"),
    ("AG", "AG %", "higher"),
    ("SPS", "SPS", "higher"),
    ("COMP", "COMP", "lower"),
    ("loc_precision", "loc. precision", "higher"),
    ("loc_recall", "loc. recall", "higher"),
    ("loc_iou", "loc. IoU", "higher"),
    ("loc_energy_in", "energy in event", "higher"),
    ("deletion_auc", "deletion AUC", "lower"),
    ("insertion_auc", "insertion AUC", "higher"),
    ("randomization_spearman", "rand. Spearman", "lower"),
]
#: The columns computed by the sanity checks (on the clean test clips only).
SANITY_KEYS = ("deletion_auc", "insertion_auc", "randomization_spearman")
RANDOM_ROW = "random mask"


class Method(NamedTuple):
    """One entry of ``methods``, checked (see :func:`check_methods`)."""

    name: str
    yaml: Path
    int_method: str
    overrides: dict
    pretrained_interpreter: str | None
    nmf_overrides: dict | None
    brain_class: type

    @property
    def trainable(self) -> bool:
        return issubclass(self.brain_class, TrainableInterpreterBrain)

    @property
    def folder_name(self) -> str:
        """The method's folder under the output folder (its name, file-system safe)."""
        return _folder_name(self.name)


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


METHOD_KEYS = {"name", "yaml", "int_method", "overrides", "pretrained_interpreter", "nmf_overrides"}


def check_methods(entries: list) -> list[Method]:
    """Check ``methods`` before any work: names, YAMLs, int_methods, checkpoints.

    Raises
    ------
    ValueError
        Not a list of entries, an entry without ``name`` / ``yaml`` / ``int_method``, an
        unknown key or ``int_method``, a repeated name.
    FileNotFoundError
        A YAML that is not in hparams/, a ``pretrained_interpreter`` that does not exist.
    """
    if not isinstance(entries, list) or not entries:
        raise ValueError(
            "methods must be a non-empty list of {name, yaml, int_method, ...} entries; see "
            "hparams/compare.yaml"
        )
    methods, names = [], set()
    for entry in entries:
        if not isinstance(entry, dict) or not {"name", "yaml", "int_method"} <= set(entry):
            raise ValueError(
                f"each method needs name, yaml and int_method, got {entry!r}; see "
                "hparams/compare.yaml"
            )
        unknown = set(entry) - METHOD_KEYS
        if unknown:
            raise ValueError(
                f"method {entry['name']!r} has unknown keys {sorted(unknown)}; use "
                f"{sorted(METHOD_KEYS)}"
            )
        name = str(entry["name"])
        folder = _folder_name(name)
        if folder in names or name == RANDOM_ROW:
            raise ValueError(
                f"method name {name!r} is used twice (its folder {folder!r}, or the reserved "
                f"{RANDOM_ROW!r}); rename it"
            )
        names.add(folder)
        if entry["int_method"] not in INTERPRETERS:
            raise ValueError(
                f"method {name!r}: unknown int_method {entry['int_method']!r}; use one of "
                f"{', '.join(INTERPRETERS)} (audio_interpretability.brains.INTERPRETERS)"
            )
        yaml = ROOT / "hparams" / entry["yaml"]
        if not yaml.is_file():
            raise FileNotFoundError(
                f"method {name!r}: {yaml} does not exist; give a YAML of hparams/, e.g. "
                f"{INTERPRETERS[entry['int_method']][1]}"
            )
        psi = entry.get("pretrained_interpreter")
        if psi and not os.path.exists(psi):
            raise FileNotFoundError(
                f"method {name!r}: pretrained_interpreter {psi} does not exist; pass the "
                f"{PSI_FILE} of a trained run, or null to train it here"
            )
        methods.append(
            Method(
                name=name,
                yaml=yaml,
                int_method=entry["int_method"],
                overrides=dict(entry.get("overrides") or {}),
                pretrained_interpreter=psi or None,
                nmf_overrides=entry.get("nmf_overrides"),
                brain_class=interpreter_class(entry["int_method"]),
            )
        )
    return methods


def check_classifier(hparams: dict) -> None:
    """The classifier checkpoints exist (before any work)."""
    for key in ("embedding_model_path", "classifier_model_path"):
        path = hparams[key]
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(
                f"{key} {path} does not exist; pass --{key} <the {os.path.basename(str(path))} "
                "exported by recipes/ESC50/classification/train.py (its pretrained_folder)>"
            )


# --------------------------------------------------------------------------------------------
# The recipes, through their main(argv)
# --------------------------------------------------------------------------------------------
def _recipe(script: str):
    """The module of ``recipes/ESC50/interpret/<script>`` (its ``main(argv)``)."""
    spec = importlib.util.spec_from_file_location(f"compare_{Path(script).stem}", HERE / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cli(options: dict) -> list[str]:
    """``{key: value}`` -> ``["--key", "value", ...]`` (lists and dicts as YAML flow)."""
    argv = []
    for key, value in options.items():
        if value is None:
            text = "null"
        elif isinstance(value, (list, dict)):
            text = json.dumps(value)
        else:
            text = str(value)
        argv += [f"--{key}", text]
    return argv


def _run_options(run_opts: dict) -> list[str]:
    argv = []
    if run_opts.get("device"):
        argv += ["--device", str(run_opts["device"])]
    if run_opts.get("noprogressbar"):
        argv.append("--noprogressbar")
    return argv


def method_options(hparams: dict, method: Method, folder: str, extra: dict) -> dict:
    """The overrides every step of ``method`` gets: data, classifier, sizes, ``extra`` (files
    made by an earlier step), then its own."""
    return {
        "data_folder": hparams["data_folder"],
        "out_n_neurons": hparams["out_n_neurons"],
        "embedding_model_path": hparams["embedding_model_path"],
        "classifier_model_path": hparams["classifier_model_path"],
        "cache_folder": hparams["cache_folder"],
        "num_threads": hparams["num_threads"],
        "seed": hparams["seed"],
        "output_folder": folder,
        **dict(hparams["classifier_overrides"] or {}),
        **extra,
        **method.overrides,
    }


def _done(path: str, hparams: dict) -> bool:
    return os.path.isfile(path) and not hparams["rerun"]


def train_method(hparams: dict, method: Method, run_opts: dict, folder: str) -> tuple[str, dict]:
    """Train ``method`` by its own recipe (L2I: its NMF dictionary first, by train_nmf.py).

    Returns
    -------
    psi : str
        The trained ``psi_model.ckpt``.
    extra : dict
        Overrides the evaluation needs too (``nmf_decoder_path`` of the trained dictionary).
    """
    extra = {}
    if method.nmf_overrides is not None and "nmf_decoder_path" not in method.overrides:
        nmf_folder = os.path.join(folder, "nmf")
        if not _done(os.path.join(nmf_folder, "test_metrics.json"), hparams):
            logger.info("%s: training its NMF dictionary (train_nmf.py)", method.name)
            nmf_options = {
                "data_folder": hparams["data_folder"],
                "output_folder": nmf_folder,
                "cache_folder": hparams["cache_folder"],
                "num_threads": hparams["num_threads"],
                "seed": hparams["seed"],
                **method.nmf_overrides,
            }
            argv = [str(ROOT / "hparams" / "nmf.yaml"), *_cli(nmf_options)]
            _recipe("train_nmf.py").main(argv + _run_options(run_opts))
        extra["nmf_decoder_path"] = os.path.join(nmf_folder, "save", "nmf_decoder.ckpt")
    options = {
        "number_of_epochs": hparams["number_of_epochs"],
        "batch_size": hparams["train_batch_size"],
        **method_options(hparams, method, os.path.join(folder, "train"), extra),
    }
    psi = os.path.join(folder, "train", "save", PSI_FILE)
    if not _done(os.path.join(folder, "train", "test_metrics.json"), hparams):
        script = method.brain_class.train_script
        logger.info(
            "%s: training (%s, %s epochs)", method.name, script, options["number_of_epochs"]
        )
        _recipe(script).main([str(method.yaml), *_cli(options), *_run_options(run_opts)])
    return psi, extra


def eval_argv(
    hparams: dict, method: Method, run_opts: dict, folder: str, psi, extra: dict
) -> list[str]:
    """eval.py's command line for ``method`` (output ``<folder>/eval``)."""
    options = {
        **method_options(hparams, method, os.path.join(folder, "eval"), extra),
        "int_method": method.int_method,
        "eval_protocol": hparams["eval_protocol"],
        "overlap_type": hparams["overlap_type"],
        "ljspeech_path": hparams["ljspeech_path"],
        "wham_folder": hparams["wham_folder"],
        "batch_size": hparams["batch_size"],
        "random_baseline": True,
    }
    if psi:
        options["pretrained_interpreter"] = psi
    return [str(method.yaml), *_cli(options), *_run_options(run_opts)]


def evaluate_method(
    hparams: dict, method: Method, run_opts: dict, folder: str, psi, extra: dict
) -> tuple:
    """eval.py's ``main`` for ``method``, then its Brain (built by the functions eval.py uses,
    from the same command line) for the sanity checks. Returns ``({setting: metrics}, brain,
    test set)``."""
    argv = eval_argv(hparams, method, run_opts, folder, psi, extra)
    metrics_file = os.path.join(folder, "eval", "eval_metrics.json")
    if _done(metrics_file, hparams):
        with open(metrics_file, encoding="utf-8") as f:
            results = json.load(f)
    else:
        results = _recipe("eval.py").main(argv)
    method_hparams, method_run_opts = load_recipe(argv, create_experiment=False)
    brain_class = check_interpreter(method_hparams)
    datasets = prepare_datasets(method_hparams, splits=("test",))
    brain = build_interpreter(
        brain_class, method_hparams, method_run_opts, datasets["label_encoder"]
    )
    return results, brain, datasets["test"]


# --------------------------------------------------------------------------------------------
# Sanity checks, table, figure
# --------------------------------------------------------------------------------------------
def sanity_clips(test_set, n_clips: int) -> tuple[list[str], torch.Tensor]:
    """``n_clips`` clips spread evenly over ``test_set`` (the first, the last, and evenly
    between: several classes, not the first class's clips): ids and (B, T) waveforms (cropped
    to the shortest)."""
    if n_clips < 1:
        raise ValueError(f"n_sanity_clips must be at least 1, got {n_clips}")
    n = min(n_clips, len(test_set))
    indices = sorted({round(k * (len(test_set) - 1) / max(n - 1, 1)) for k in range(n)})
    items = [test_set[i] for i in indices]
    length = min(item["sig"].shape[0] for item in items)
    return [item["id"] for item in items], torch.stack([item["sig"][:length] for item in items])


def run_sanity_checks(brain, wavs: torch.Tensor, n_steps: int, seed: int) -> dict:
    """Deletion / insertion AUCs and the cascading randomisation of ``brain`` on ``wavs``.

    Returns
    -------
    dict
        ``deletion_auc``, ``insertion_auc``, ``random_deletion_auc``,
        ``random_insertion_auc``, ``randomization_spearman`` / ``randomization_ssim`` (after
        full randomisation) and ``randomization_stages`` (every stage).
    """
    results = sanity.deletion_insertion(brain, wavs, n_steps=n_steps, seed=seed)
    stages = sanity.cascading_randomization(brain, wavs, seed=seed)
    results["randomization_spearman"] = stages[-1].spearman
    results["randomization_ssim"] = stages[-1].ssim
    results["randomization_stages"] = [stage._asdict() for stage in stages]
    return results


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def comparison_rows(report: dict) -> dict:
    """``{setting: {row: {column key: value or None}}}``: each method, then the random mask
    (the first method's ``random_*`` scores and random-order AUCs)."""
    methods = report["methods"]
    first = next(iter(methods.values()))
    settings = list(first["settings"])
    rows: dict = {}
    for index, setting in enumerate(settings):
        table = {}
        for name, result in methods.items():
            metrics = result["settings"].get(setting, {})
            row = {key: metrics.get(key) for key, _, _ in COLUMNS if key not in SANITY_KEYS}
            for key in SANITY_KEYS:  # computed on the clean test clips: first setting only
                row[key] = result["sanity"].get(key) if index == 0 else None
            table[name] = row
        metrics = first["settings"][setting]
        row = {key: metrics.get(f"random_{key}") for key, _, _ in COLUMNS}
        row["deletion_auc"] = first["sanity"]["random_deletion_auc"] if index == 0 else None
        row["insertion_auc"] = first["sanity"]["random_insertion_auc"] if index == 0 else None
        row["randomization_spearman"] = None
        table[RANDOM_ROW] = row
        rows[setting] = table
    return rows


def comparison_table(report: dict) -> str:
    """Markdown: one table per setting, a row per method and the random mask."""
    first_name = next(iter(report["methods"]))
    lines = []
    for index, (setting, table) in enumerate(report["rows"].items()):
        n = report["methods"][first_name]["settings"][setting].get("n_samples")
        lines += [f"**{setting}** ({'?' if n is None else int(n)} clips)", ""]
        header = [f"{label} ({'↑' if better == 'higher' else '↓'})" for _, label, better in COLUMNS]
        lines += ["| method | " + " | ".join(header) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
        for name, row in table.items():
            cells = [_fmt(row.get(key)) for key, _, _ in COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        if index == 0:
            lines += [
                f"Deletion / insertion AUC and the Spearman correlation after randomising the "
                f"whole classifier: on {report['n_sanity_clips']} clean test clips spread over "
                "the test fold (the same for every method). "
                f"The random mask is {first_name}'s mask with its values shuffled; its AUCs "
                "are those of a random order of the bins.",
                "",
            ]
    return "\n".join(lines)


def plot_masks(path: str | os.PathLike, ids: list[str], X: torch.Tensor, masks: dict) -> Path:
    """Save a figure: a row per clip, the input spectrogram then each method's mask.

    Arguments
    ---------
    path : str or os.PathLike
        The PNG to write.
    ids : list of str
        Clip ids (row titles).
    X : torch.Tensor
        (B, frames, bins) log1p spectrograms.
    masks : dict
        ``{method: (B, frames', bins) mask}`` (frames' <= frames: L-MAC's crop).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = [("log1p |STFT|", X), *masks.items()]
    fig = Figure(figsize=(2.6 * len(columns) + 0.5, 2.3 * len(ids) + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(ids), len(columns), squeeze=False)
    for row, clip in enumerate(ids):
        for col, (title, data) in enumerate(columns):
            ax = axes[row][col]
            image = data[row].detach().float().cpu().numpy().T  # (bins, frames)
            limits = {"vmin": 0.0, "vmax": 1.0} if col else {}
            ax.imshow(image, origin="lower", aspect="auto", interpolation="nearest", **limits)
            ax.set_title(title if row == 0 else "", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(clip, fontsize=8)
    path = Path(path)
    fig.savefig(path, format="png", dpi=80)
    return path


def _write_json(path: str, data: dict) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def main(argv=None) -> dict:
    """Run the comparison; ``argv`` defaults to ``sys.argv[1:]``.

    Returns
    -------
    dict
        The report written to ``comparison.json``.
    """
    hparams, run_opts = load_recipe(argv)
    methods = check_methods(hparams["methods"])  # fail early, before any work
    check_classifier(hparams)
    if hparams["n_figure_clips"] > hparams["n_sanity_clips"]:
        raise ValueError(
            f"n_figure_clips ({hparams['n_figure_clips']}) must be at most n_sanity_clips "
            f"({hparams['n_sanity_clips']}): the figure shows the sanity clips"
        )
    out = hparams["output_folder"]
    report: dict = {
        "methods": {},
        "n_sanity_clips": hparams["n_sanity_clips"],
        "curve_steps": hparams["curve_steps"],
    }
    masks, ids, X = {}, None, None
    for method in tqdm(methods, desc="methods", disable=bool(run_opts.get("noprogressbar"))):
        folder = os.path.join(out, method.folder_name)
        psi, extra = method.pretrained_interpreter, {}
        if method.trainable and not psi:
            psi, extra = train_method(hparams, method, run_opts, folder)
        logger.info("%s: evaluating (eval.py) into %s", method.name, folder)
        results, brain, test_set = evaluate_method(hparams, method, run_opts, folder, psi, extra)
        clip_ids, wavs = sanity_clips(test_set, hparams["n_sanity_clips"])
        logger.info("%s: sanity checks on %d clips", method.name, len(clip_ids))
        checks = run_sanity_checks(brain, wavs, hparams["curve_steps"], hparams["sanity_seed"])
        spec, _, mask_out = brain.interpret(wavs.to(brain.device))
        n_fig = hparams["n_figure_clips"]
        if X is None or spec.X.shape[1] > X.shape[1]:  # the uncropped spectrogram
            ids, X = clip_ids[:n_fig], spec.X[:n_fig].detach().cpu()
        masks[method.name] = mask_out.mask[:n_fig].detach().cpu()
        report["methods"][method.name] = {
            "yaml": method.yaml.name,
            "int_method": method.int_method,
            "pretrained_interpreter": psi,
            "settings": results,
            "sanity": checks,
            "sanity_clips": clip_ids,
        }
        del brain
    report["rows"] = comparison_rows(report)
    _write_json(os.path.join(out, "comparison.json"), report)
    text = comparison_table(report)
    with open(os.path.join(out, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(text)
    plot_masks(os.path.join(out, "masks.png"), ids, X, masks)
    logger.info("wrote %s/comparison.json, comparison.md, masks.png", out)
    print(text)
    return report


if __name__ == "__main__":
    main()
