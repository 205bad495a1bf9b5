"""A listenable HTML report of evaluation output folders.

::

    python -m audio_interpretability.report OUTPUT_ROOT [--out OUTPUT_ROOT/report] [--clips 4]

writes ``<out>/index.html`` (self-contained in its folder: the WAVs and PNGs it shows are
copied into ``<out>/media/``, linked relatively, no external CSS / JS, opens from ``file://``)
and ``<out>/summary.md`` (the same tables in Markdown, with the paths of the files shown):

* a table per setting (clean, wham, mixtures, LJSpeech, white_noise): a row per evaluated
  interpreter run, the metrics of ``docs/METRICS.md`` as columns (direction in the header, the
  meaning as a tooltip), and beneath each row its random-mask and swapped-mask baselines;
* the classifier runs (accuracy);
* for ``--clips`` clips per evaluation, the saved figure (input / mask / interpretation /
  ground truth) with players for the original and the interpretation, true and predicted class;
* the same clips across methods side by side (clip ids saved by several runs in one setting).

Discovery (explicit, see ``docs/REPORT.md``): every folder under the root holding a
``test_metrics.json`` is an evaluation. Its **run** is the nearest folder at or above it (up to
the root) holding a ``hyperparams.yaml`` (SpeechBrain writes one per run); the run's path
relative to the root names the row, the YAML's top-level ``int_method`` the method. The
**setting** is the path from the run to the metrics folder (``<run>/mixtures`` -> ``mixtures``);
metrics at the run folder itself are the training recipes' main test (``wham`` when the run
has ``add_wham_noise: True``, else ``clean``). A ``test_metrics.json`` with faithfulness
metrics (``FF``, ``fid_in``) is an interpreter evaluation, one with only ``accuracy`` a
classifier run; anything else, unreadable JSON, unknown setting names and missing
``hyperparams.yaml`` are reported as warnings (logged and listed in the report), never raised.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import html
import json
import logging
import os
import re
import shutil
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "COLUMNS",
    "ClassifierRun",
    "Clip",
    "Column",
    "Discovery",
    "Evaluation",
    "build_report",
    "discover",
    "format_value",
    "main",
    "parse_clip_name",
]


class Column(NamedTuple):
    """A metric column: key in ``test_metrics.json``, header, better direction, meaning."""

    key: str
    label: str
    higher_is_better: bool
    meaning: str


#: The table's columns, in order, with their meaning from docs/METRICS.md (the tooltips).
COLUMNS: tuple[Column, ...] = (
    Column("accuracy", "accuracy", True, "classifier accuracy 1[c = label] on this setting"),
    Column("fid_in", "Fid-In", True, "input fidelity 1[argmax p_in = c]: the masked-in input keeps the decision"),
    Column("FF", "FF", True, "faithfulness p_c - p_out_c: masking the interpretation out drops the probability"),
    Column("AI", "AI", True, "average increase 100 * 1[p_in_c > p_c] (%)"),
    Column("AD", "AD", False, "average drop 100 * max(0, p_c - p_in_c) / p_c (%)"),
    Column("AG", "AG", True, "average gain 100 * max(0, p_in_c - p_c) / (1 - p_c) (%)"),
    Column("SPS", "SPS", True, "sparseness: Gini index of the mask values, higher = sparser"),
    Column("COMP", "COMP", False, "complexity: entropy of the mask's fractional contributions, lower = simpler"),
    Column("loc_precision", "loc precision", True, "|mask AND truth| / |mask|: share of the mask on the ground-truth event bins"),
    Column("loc_recall", "loc recall", True, "|mask AND truth| / |truth|: share of the event bins the mask finds"),
    Column("loc_iou", "loc IoU", True, "|mask AND truth| / |mask OR truth|"),
    Column("loc_energy_in", "loc energy in", True, "share of the masked energy (M |S|)^2 that lies on the event bins"),
)  # fmt: skip

#: Baseline rows shown under each run: (key prefix in test_metrics.json, row label).
BASELINES: tuple[tuple[str, str], ...] = (
    ("random_", "random mask (same values, shuffled)"),
    ("swap_", "swapped mask (another clip's)"),
)

#: Setting folder names eval.py and the training recipes write, in display order.
KNOWN_SETTINGS: tuple[str, ...] = ("clean", "wham", "mixtures", "LJSpeech", "white_noise")

#: Sub-folders of a run that hold a second run's tests (train_lmac.py --finetuning True).
SUB_RUNS: tuple[str, ...] = ("finetuning",)

#: Folders never searched for evaluations (checkpoints, caches, saved clips, data).
_PRUNE = {"interpretations", "overlap", "save", "manifest", "audio_cache", "__pycache__"}
#: Sub-folders of an evaluation holding saved clips (eval.py's in-domain / overlap pairs).
_CLIP_FOLDERS = ("interpretations", "overlap")
_CLIP_NAME = re.compile(r"^(?P<id>.*?)_true-(?P<true>.*)_pred-(?P<pred>.*)$")
_FAITHFULNESS_KEYS = ("FF", "fid_in", "AI", "AD")


@dataclass
class Clip:
    """One saved interpretation: ``<evaluation>/interpretations/<name>/``."""

    name: str
    clip_id: str
    true_class: str | None
    pred_class: str | None
    folder: Path
    original: Path | None
    interpretation: Path | None
    figure: Path | None


@dataclass
class Evaluation:
    """One interpreter evaluation: a ``test_metrics.json`` of an interpreter run."""

    run: str  # run folder relative to the root (posix), the row label
    run_folder: Path
    method: str | None  # the run's int_method
    yaml: str | None  # the YAML the run was generated from (hyperparams.yaml's header)
    setting: str
    metrics_file: Path
    metrics: dict
    clips: list[Clip] = field(default_factory=list)


@dataclass
class ClassifierRun:
    """A classifier's ``test_metrics.json`` (accuracy)."""

    run: str
    yaml: str | None
    metrics_file: Path
    metrics: dict


@dataclass
class Discovery:
    """What :func:`discover` found under a root."""

    root: Path
    evaluations: list[Evaluation]
    classifiers: list[ClassifierRun]
    warnings: list[str]


# ----------------------------------------------------------------------------- discovery
def parse_clip_name(name: str) -> tuple[str, str | None, str | None]:
    """``<id>_true-<class>_pred-<class>`` (the name the interpreters save clips under) ->
    ``(id, true, pred)``; other names give ``(name, None, None)``.

    Example
    -------
    >>> parse_clip_name("5-100160-B-0_true-dog_bark_pred-rain")
    ('5-100160-B-0', 'dog_bark', 'rain')
    >>> parse_clip_name("my_clip")
    ('my_clip', None, None)
    """
    match = _CLIP_NAME.match(name)
    if match is None:
        return name, None, None
    return match["id"], match["true"], match["pred"]


def _yaml_scalar(text: str, key: str) -> str | None:
    """A top-level ``key: value`` of a (Hyper)YAML file, read without building its objects."""
    match = re.search(rf"^{re.escape(key)}:[ \t]*([^\s#]+)", text, flags=re.MULTILINE)
    return match.group(1).strip("'\"") if match else None


def _yaml_source(text: str) -> str | None:
    """The YAML a SpeechBrain ``hyperparams.yaml`` was generated from (its header line)."""
    match = re.search(r"^# Generated .* from:\s*\n#\s*(\S+)", text, flags=re.MULTILINE)
    return Path(match.group(1)).name if match else None


def _find_run_folder(folder: Path, root: Path) -> Path | None:
    """The nearest folder from ``folder`` up to ``root`` (both included) with a hyperparams.yaml."""
    current = folder
    while True:
        if (current / "hyperparams.yaml").is_file():
            return current
        if current == root or current.parent == current:
            return None
        current = current.parent


def _find_clips(folder: Path, warnings: list[str]) -> list[Clip]:
    clips = []
    for sub in _CLIP_FOLDERS:
        base = folder / sub
        if not base.is_dir():
            continue
        for clip_folder in sorted(p for p in base.iterdir() if p.is_dir()):
            name = clip_folder.name
            original = clip_folder / "original.wav"
            interpretation = clip_folder / "interpretation.wav"
            figure = clip_folder / f"{name}.png"
            if not figure.is_file():
                pngs = sorted(clip_folder.glob("*.png"))
                figure = pngs[0] if pngs else None
            found = {
                "original": original if original.is_file() else None,
                "interpretation": interpretation if interpretation.is_file() else None,
            }
            if not any(found.values()) and figure is None:
                warnings.append(
                    f"{clip_folder}: no original.wav, interpretation.wav or PNG; skipped"
                )
                continue
            missing = [k for k, v in found.items() if v is None] + (
                ["PNG"] if figure is None else []
            )
            if missing:
                warnings.append(f"{clip_folder}: missing {', '.join(missing)}; shown without it")
            clip_id, true_class, pred_class = parse_clip_name(name)
            clips.append(
                Clip(
                    name,
                    clip_id,
                    true_class,
                    pred_class,
                    clip_folder,
                    found["original"],
                    found["interpretation"],
                    figure,
                )  # fmt: skip
            )
    return clips


def discover(root: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()) -> Discovery:
    """Find the interpreter evaluations and classifier runs under ``root``.

    Arguments
    ---------
    root : str or os.PathLike
        An output folder (e.g. ``results/demo``), searched recursively.
    exclude : Sequence of paths
        Folders not to search (the report's own output folder).

    Returns
    -------
    Discovery
        Evaluations sorted by setting then run, classifier runs, and the warnings.

    Raises
    ------
    FileNotFoundError
        ``root`` is not a folder.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} is not a folder; give the output folder of a run (e.g. results/demo)."
        )
    excluded = {Path(p).resolve() for p in exclude}
    warnings: list[str] = []
    evaluations: list[Evaluation] = []
    classifiers: list[ClassifierRun] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _PRUNE and not d.startswith(".") and (here / d).resolve() not in excluded
        )
        if "test_metrics.json" not in filenames:
            continue
        metrics_file = here / "test_metrics.json"
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            warnings.append(f"{metrics_file}: unreadable ({error}); skipped")
            continue
        if not isinstance(metrics, dict):
            warnings.append(f"{metrics_file}: not a JSON object; skipped")
            continue
        run_folder = _find_run_folder(here, root)
        text = ""
        if run_folder is None:
            run_folder = here.parent if here.name in KNOWN_SETTINGS and here != root else here
            warnings.append(
                f"{metrics_file}: no hyperparams.yaml in its folder or above (up to the root); "
                f"run taken as {run_folder.name!r}, method unknown"
            )
        else:
            text = (run_folder / "hyperparams.yaml").read_text(encoding="utf-8", errors="replace")
        run = run_folder.relative_to(root).as_posix()
        run = root.name if run == "." else run
        yaml = _yaml_source(text)
        if any(k in metrics for k in _FAITHFULNESS_KEYS):
            parts = here.relative_to(run_folder).parts
            if parts and parts[0] in SUB_RUNS:  # e.g. L-MAC fine-tuning: <run>/finetuning/...
                run, parts = f"{run}/{parts[0]}", parts[1:]
            if not parts:  # a training recipe's main test, in its run folder
                wham = (_yaml_scalar(text, "add_wham_noise") or "").lower() == "true"
                setting = "wham" if wham else "clean"
            else:
                setting = "/".join(parts)
                if setting not in KNOWN_SETTINGS:
                    warnings.append(
                        f"{metrics_file}: setting folder {setting!r} is none of "
                        f"{', '.join(KNOWN_SETTINGS)}; shown as its own setting"
                    )
            evaluations.append(
                Evaluation(
                    run,
                    run_folder,
                    _yaml_scalar(text, "int_method"),
                    yaml,
                    setting,
                    metrics_file,
                    metrics,
                    _find_clips(here, warnings),
                )  # fmt: skip
            )
        elif "accuracy" in metrics:
            classifiers.append(ClassifierRun(run, yaml, metrics_file, metrics))
        elif yaml == "nmf.yaml":  # L2I's NMF dictionary: reconstruction losses, no mask
            logger.info("%s: an NMF dictionary's losses; not a table row", metrics_file)
        else:
            warnings.append(
                f"{metrics_file}: neither an interpreter evaluation (no FF / fid_in) nor a "
                "classifier run (no accuracy), e.g. an NMF dictionary's; skipped"
            )
    order = {s: i for i, s in enumerate(KNOWN_SETTINGS)}
    evaluations.sort(key=lambda e: (order.get(e.setting, len(order)), e.setting, e.run))
    classifiers.sort(key=lambda c: c.run)
    for message in warnings:
        logger.warning(message)
    return Discovery(root, evaluations, classifiers, warnings)


# ----------------------------------------------------------------------------- formatting
def format_value(value) -> str:
    """A metric as shown in the tables: 3 decimals (2 from 10 on), ``–`` when absent.

    Example
    -------
    >>> format_value(0.89856), format_value(30.0), format_value(None)
    ('0.899', '30.00', '–')
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else str(value)
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def _header(column: Column) -> str:
    return f"{column.label} {'↑' if column.higher_is_better else '↓'}"


def _tooltip(column: Column) -> str:
    better = "higher" if column.higher_is_better else "lower"
    return f"{column.key}: {column.meaning}; {better} is better (docs/METRICS.md)"


def _method_label(evaluation: Evaluation) -> str:
    return f"{evaluation.run} ({evaluation.method})" if evaluation.method else evaluation.run


def _settings(evaluations: list[Evaluation]) -> list[str]:
    return list(dict.fromkeys(e.setting for e in evaluations))


def _columns_for(evaluations: list[Evaluation]) -> list[Column]:
    """The columns some evaluation of the setting has (localisation only with ground truth)."""
    return [c for c in COLUMNS if any(c.key in e.metrics for e in evaluations)]


def _best(evaluations: list[Evaluation], column: Column) -> float | None:
    values = [e.metrics[column.key] for e in evaluations if _is_number(e.metrics.get(column.key))]
    if len(values) < 2:
        return None
    return max(values) if column.higher_is_better else min(values)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _slug(name: str) -> str:
    """A file-name-safe, collision-free folder name for ``name``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"
    if safe != name:
        safe = f"{safe[:80]}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"
    return safe


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _href(path: str) -> str:
    return html.escape(urllib.parse.quote(path), quote=True)


# ----------------------------------------------------------------------------- media
class _Media:
    """Copies the shown files into ``<staging>/`` and hands back ``media/...`` links."""

    def __init__(self, staging: Path):
        self.staging = staging
        self.copied: dict[Path, str] = {}

    def link(self, source: Path | None, *parts: str) -> str | None:
        if source is None:
            return None
        if source in self.copied:
            return self.copied[source]
        rel = "/".join([*(_slug(p) for p in parts), _media_name(source)])
        destination = self.staging / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        self.copied[source] = f"media/{rel}"
        return self.copied[source]


def _media_name(source: Path) -> str:
    if source.suffix.lower() == ".png":
        return "figure.png"
    return _slug(source.stem) + source.suffix.lower()


@dataclass
class _ShownClip:
    evaluation: Evaluation
    clip: Clip
    original: str | None
    interpretation: str | None
    figure: str | None


def _show(media: _Media, evaluation: Evaluation, clip: Clip) -> _ShownClip:
    parts = (evaluation.run, evaluation.setting, clip.name)
    return _ShownClip(
        evaluation,
        clip,
        media.link(clip.original, *parts),
        media.link(clip.interpretation, *parts),
        media.link(clip.figure, *parts),
    )


def _shared_clips(
    evaluations: list[Evaluation], n_clips: int
) -> dict[str, list[tuple[str, list[tuple[Evaluation, Clip]]]]]:
    """Per setting: up to ``n_clips`` clip ids saved by at least two runs, with those runs
    (shown as one row of cards per clip, wrapping)."""
    shared = {}
    for setting in _settings(evaluations):
        by_id: dict[str, list[tuple[Evaluation, Clip]]] = {}
        for evaluation in (e for e in evaluations if e.setting == setting):
            for clip in evaluation.clips:
                runs = by_id.setdefault(clip.clip_id, [])
                if all(e is not evaluation for e, _ in runs):
                    runs.append((evaluation, clip))
        rows = [(i, runs) for i, runs in sorted(by_id.items()) if len(runs) >= 2]
        if rows:
            shared[setting] = rows[:n_clips]
    return shared


# ----------------------------------------------------------------------------- HTML
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 110em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f0f0f0; white-space: nowrap; }
th[title] { cursor: help; text-decoration: underline dotted; }
td.name, th.name { text-align: left; }
tr.baseline td { color: #777; font-size: 0.9em; }
td.best { font-weight: bold; }
.clips { display: flex; flex-wrap: wrap; gap: 1em; }
figure.clip { border: 1px solid #ddd; padding: 0.5em; margin: 0; max-width: 46em; }
figure.clip img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.9em; margin-bottom: 0.3em; }
.players { display: grid; grid-template-columns: auto 1fr; gap: 0.2em 0.5em; align-items: center; }
.side figure.clip { max-width: 34em; }
.warnings li { color: #a40; }
code { font-size: 0.95em; }
.scroll { overflow-x: auto; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _caption(clip: Clip) -> str:
    parts = [f"<b>{_e(clip.clip_id)}</b>"]
    if clip.true_class is not None:
        mark = "" if clip.true_class == clip.pred_class else " ✗"
        parts.append(
            f"true <i>{_e(clip.true_class)}</i>, predicted <i>{_e(clip.pred_class)}</i>{mark}"
        )
    return " · ".join(parts)


def _players(shown: _ShownClip) -> str:
    rows = []
    for label, src in (("original", shown.original), ("interpretation", shown.interpretation)):
        if src is not None:
            rows.append(
                f'<span>{label}</span><audio controls preload="metadata" src="{_href(src)}"></audio>'
            )
    return f'<div class="players">{"".join(rows)}</div>'


def _figure_img(shown: _ShownClip) -> str:
    if shown.figure is None:
        return "<p>(no figure saved)</p>"
    alt = f"{shown.clip.name}: input, mask, interpretation, ground truth"
    return f'<img src="{_href(shown.figure)}" alt="{_e(alt)}" loading="eager">'


def _metrics_table_html(evaluations: list[Evaluation]) -> str:
    columns = _columns_for(evaluations)
    head = "".join(f'<th title="{_e(_tooltip(c))}">{_e(_header(c))}</th>' for c in columns)
    rows = []
    best = {c.key: _best(evaluations, c) for c in columns}
    for evaluation in evaluations:
        cells = []
        for c in columns:
            value = evaluation.metrics.get(c.key)
            cls = ' class="best"' if _is_number(value) and value == best[c.key] else ""
            cells.append(f"<td{cls}>{_e(format_value(value))}</td>")
        n = format_value(evaluation.metrics.get("n_samples")).split(".")[0]
        rows.append(
            f'<tr><td class="name" title="{_e(evaluation.metrics_file)}">'
            f"{_e(_method_label(evaluation))}</td><td>{_e(n)}</td>{''.join(cells)}</tr>"
        )
        for prefix, label in BASELINES:
            if not any(prefix + c.key in evaluation.metrics for c in columns):
                continue
            cells = "".join(
                f"<td>{_e(format_value(evaluation.metrics.get(prefix + c.key)))}</td>"
                for c in columns
            )
            rows.append(
                f'<tr class="baseline"><td class="name">↳ {_e(label)}</td><td></td>{cells}</tr>'
            )
    return (
        '<table class="metrics"><thead><tr><th class="name">run (method)</th>'
        f'<th title="number of clips">n</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _classifier_table_html(classifiers: list[ClassifierRun]) -> str:
    rows = "".join(
        f'<tr><td class="name" title="{_e(c.metrics_file)}">{_e(c.run)}</td>'
        f'<td class="name">{_e(c.yaml or "")}</td>'
        f"<td>{_e(format_value(c.metrics.get('accuracy')))}</td>"
        f"<td>{_e(format_value(c.metrics.get('n_samples')).split('.')[0])}</td></tr>"
        for c in classifiers
    )
    return (
        '<table class="classifiers"><thead><tr><th class="name">classifier run</th>'
        '<th class="name">YAML</th><th title="test accuracy; higher is better">accuracy ↑</th>'
        f"<th>n</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _anchor(*parts: str) -> str:
    return _slug("-".join(parts))


def _html(
    found: Discovery,
    shown: dict[int, list[_ShownClip]],
    side: dict[str, list[tuple[str, list[_ShownClip]]]],
    n_clips: int,
) -> str:
    evaluations = found.evaluations
    settings = _settings(evaluations)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Interpretation report: {_e(found.root.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Interpretation report: <code>{_e(found.root.name)}</code></h1>",
        f"<p>From <code>{_e(found.root)}</code>, generated "
        f"{_e(datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}: "
        f"{len(evaluations)} interpreter evaluation(s) in {len(settings)} setting(s), "
        f"{len(found.classifiers)} classifier run(s). Hover over a column header for the "
        "metric's meaning (docs/METRICS.md); ↑ higher is better, ↓ lower is better; the best "
        "value of a column is in bold. Grey rows: the run's masks scored as chance baselines.</p>",
        "<nav><ul>",
        '<li><a href="#metrics">Metrics per setting</a></li>',
        '<li><a href="#clips">Clips per method</a></li>',
        '<li><a href="#side-by-side">Same clips across methods</a></li>',
    ]
    if found.classifiers:
        out.append('<li><a href="#classifiers">Classifiers</a></li>')
    if found.warnings:
        out.append('<li><a href="#warnings">Warnings</a></li>')
    out.append("</ul></nav>")

    out.append('<section id="metrics"><h2>Metrics per setting</h2>')
    for setting in settings:
        out.append(f'<h3 id="{_e(_anchor("metrics", setting))}">{_e(setting)}</h3>')
        table = _metrics_table_html([e for e in evaluations if e.setting == setting])
        out.append(f'<div class="scroll">{table}</div>')
    out.append("</section>")

    if found.classifiers:
        out.append('<section id="classifiers"><h2>Classifiers</h2>')
        out.append(_classifier_table_html(found.classifiers))
        out.append("</section>")

    out.append(f'<section id="clips"><h2>Clips per method</h2><p>The first {n_clips} saved '
               "clips of each evaluation: the saved figure (input spectrogram, mask, "
               "interpretation, ground-truth event bins when known) and the two sounds.</p>")  # fmt: skip
    for index, evaluation in enumerate(evaluations):
        out.append(
            f'<h3 id="{_e(_anchor("clips", evaluation.run, evaluation.setting))}">'
            f"{_e(_method_label(evaluation))} · {_e(evaluation.setting)}</h3>"
        )
        if not shown[index]:
            out.append("<p>(no saved interpretations)</p>")
            continue
        out.append('<div class="clips">')
        for item in shown[index]:
            out.append(
                f'<figure class="clip"><figcaption>{_caption(item.clip)}</figcaption>'
                f"{_figure_img(item)}{_players(item)}</figure>"
            )
        out.append("</div>")
    out.append("</section>")

    out.append('<section id="side-by-side"><h2>Same clips across methods</h2>')
    if not side:
        out.append("<p>No clip id was saved by more than one run in the same setting.</p>")
    for setting, rows in side.items():
        out.append(f"<h3>{_e(setting)}</h3>")
        for clip_id, items in rows:
            out.append(f'<h4>{_e(clip_id)}</h4><div class="clips side">')
            for item in items:
                out.append(
                    f'<figure class="clip"><figcaption><b>{_e(_method_label(item.evaluation))}'
                    f"</b><br>{_caption(item.clip)}</figcaption>{_figure_img(item)}"
                    f"{_players(item)}</figure>"
                )
            out.append("</div>")
    out.append("</section>")

    if found.warnings:
        out.append('<section id="warnings" class="warnings"><h2>Warnings</h2><ul>')
        out.extend(f"<li>{_e(w)}</li>" for w in found.warnings)
        out.append("</ul></section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- Markdown
def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(
    found: Discovery,
    shown: dict[int, list[_ShownClip]],
    side: dict[str, list[tuple[str, list[_ShownClip]]]],
) -> str:
    evaluations = found.evaluations
    lines = [f"# Interpretation report: {_md(found.root.name)}", "", f"From `{found.root}`.", ""]
    lines += ["Directions: ↑ higher is better, ↓ lower is better (docs/METRICS.md).", ""]
    for setting in _settings(evaluations):
        subset = [e for e in evaluations if e.setting == setting]
        columns = _columns_for(subset)
        lines += [f"## {_md(setting)}", ""]
        lines.append("| run (method) | n | " + " | ".join(_header(c) for c in columns) + " |")
        lines.append("| --- | ---: | " + " | ".join("---:" for _ in columns) + " |")
        for e in subset:
            n = format_value(e.metrics.get("n_samples")).split(".")[0]
            values = " | ".join(format_value(e.metrics.get(c.key)) for c in columns)
            lines.append(f"| {_md(_method_label(e))} | {n} | {values} |")
            for prefix, label in BASELINES:
                if any(prefix + c.key in e.metrics for c in columns):
                    values = " | ".join(
                        format_value(e.metrics.get(prefix + c.key)) for c in columns
                    )
                    lines.append(f"| ↳ {_md(label)} |  | {values} |")
        lines.append("")
    if found.classifiers:
        lines += ["## Classifiers", "", "| classifier run | YAML | accuracy ↑ | n |"]
        lines.append("| --- | --- | ---: | ---: |")
        for c in found.classifiers:
            n = format_value(c.metrics.get("n_samples")).split(".")[0]
            lines.append(
                f"| {_md(c.run)} | {_md(c.yaml or '')} | {format_value(c.metrics.get('accuracy'))} | {n} |"
            )
        lines.append("")
    lines += [
        "## Files shown",
        "",
        "| run | setting | clip | true | predicted | figure | original | interpretation | from |",
    ]
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for index, e in enumerate(evaluations):
        for item in shown[index]:
            c = item.clip
            lines.append(
                f"| {_md(e.run)} | {_md(e.setting)} | {_md(c.clip_id)} | {_md(c.true_class or '')} "
                f"| {_md(c.pred_class or '')} | {_md(item.figure or '')} | {_md(item.original or '')} "
                f"| {_md(item.interpretation or '')} | {_md(_relative(c.folder, found.root))} |"
            )
    lines.append("")
    if side:
        lines += ["## Same clips across methods", ""]
        for setting, rows in side.items():
            for clip_id, items in rows:
                runs = ", ".join(
                    f"{_md(i.evaluation.run)} (`{_md(i.interpretation or '')}`)" for i in items
                )
                lines.append(f"* {_md(setting)} / {_md(clip_id)}: {runs}")
        lines.append("")
    if found.warnings:
        lines += ["## Warnings", ""] + [f"* {_md(w)}" for w in found.warnings] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report
def _new_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder ``<parent>/<prefix>-<pid>-<n>`` (mode from the umask, unlike
    :func:`tempfile.mkdtemp`'s 0700)."""
    for n in range(1000):
        folder = parent / f"{prefix}-{os.getpid()}-{n}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a {prefix} folder in {parent}; remove the old ones.")


def _write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` (created with the umask's mode, like
    any file the user writes), then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def build_report(
    root: str | os.PathLike, out: str | os.PathLike | None = None, n_clips: int = 4
) -> Path:
    """Write ``<out>/index.html``, ``<out>/summary.md`` and ``<out>/media/`` for ``root``.

    Arguments
    ---------
    root : str or os.PathLike
        The output folder to report on (searched recursively, see :func:`discover`).
    out : str or os.PathLike, optional
        The report folder (default ``<root>/report``; never searched for evaluations).
    n_clips : int
        Clips shown per evaluation, and shared clip ids per setting side by side.

    Returns
    -------
    pathlib.Path
        The written ``index.html``.

    Raises
    ------
    FileNotFoundError
        ``root`` is not a folder.
    ValueError
        No evaluation was found under ``root``, or ``n_clips`` is negative.

    Example
    -------
    >>> import json, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "lmac" / "clean").mkdir(parents=True)
    >>> _ = (root / "lmac" / "hyperparams.yaml").write_text("int_method: lmac\\n")
    >>> _ = (root / "lmac" / "clean" / "test_metrics.json").write_text(json.dumps({"FF": 0.5}))
    >>> build_report(root).relative_to(root).as_posix()
    'report/index.html'
    """
    if int(n_clips) < 0:
        raise ValueError(f"n_clips must be 0 or more, got {n_clips}.")
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    found = discover(root, exclude=[out])
    if not found.evaluations and not found.classifiers:
        raise ValueError(
            f"no test_metrics.json of an interpreter or classifier under {found.root}; run an "
            "evaluation first (e.g. bash recipes/ESC50/run_demo.sh) and give its output folder."
        )
    out.mkdir(parents=True, exist_ok=True)
    staging = _new_folder(out, ".media-new")
    try:
        media = _Media(staging)
        shown = {
            i: [_show(media, e, c) for c in e.clips[:n_clips]]
            for i, e in enumerate(found.evaluations)
        }
        side = {
            setting: [(clip_id, [_show(media, e, c) for e, c in runs]) for clip_id, runs in rows]
            for setting, rows in _shared_clips(found.evaluations, n_clips).items()
        }
        # swap the new media folder in (no stale files from an earlier report)
        old = out / "media"
        trash = None
        if old.exists():
            trash = _new_folder(out, ".media-old")
            os.replace(old, trash / "media")
        os.replace(staging, old)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_text(out / "summary.md", _markdown(found, shown, side))
    index = _write_text(out / "index.html", _html(found, shown, side, int(n_clips)))
    logger.info("Wrote %s", index)
    return index


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: ``python -m audio_interpretability.report OUTPUT_ROOT [--out D] [--clips N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m audio_interpretability.report",
        description="A listenable HTML report (index.html + summary.md) of the evaluations "
        "(test_metrics.json, saved interpretations) under an output folder.",
    )
    parser.add_argument("root", help="output folder to report on (e.g. results/demo)")
    parser.add_argument("--out", default=None, help="report folder (default: ROOT/report)")
    parser.add_argument("--clips", type=int, default=4, help="clips shown per evaluation")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        index = build_report(args.root, args.out, args.clips)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(index)
    return index


if __name__ == "__main__":
    main(sys.argv[1:])
