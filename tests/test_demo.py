"""README's first command (recipes/ESC50/run_demo.py, run_demo.sh) at the tiny size: every step
through the real recipe entry points, the report of every method, and determinism: the same
command twice (in this process, then through run_demo.sh in a fresh one) writes identical
``test_metrics.json`` files."""

import functools
import json
import subprocess
from pathlib import Path

import pytest
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("L-MAC", "L2I", "PIQ", "Saliency", "Grad-CAM", "AMT-FocalNet", "AMT-ViT")


@functools.cache
def _demo():
    module = load_script("_run_demo", ROOT / "recipes/ESC50/run_demo.py")
    return module


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The tiny demo twice: in-process into ``a``, through run_demo.sh into ``b``."""
    base = tmp_path_factory.mktemp("demo")
    first = _demo().main([str(base / "a"), "--size", "tiny"])
    ran = subprocess.run(
        ["bash", "recipes/ESC50/run_demo.sh", str(base / "b"), "--size", "tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    return base / "a", base / "b", first, ran.stdout


def _metrics_files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("test_metrics.json")}


def test_demo_runs_every_step_and_method(demo_runs):
    a, _, timings, stdout = demo_runs
    names = [step[0] for step in _demo().steps(str(a), "tiny")]
    assert list(timings) == names  # every step ran, in order
    assert json.loads((a / "demo_steps.json").read_text()) == timings
    for model in ("cnn14", "focalnet", "vit"):
        metrics = json.loads((a / f"classifier_{model}/test_metrics.json").read_text())
        assert 0.0 <= metrics["accuracy"] <= 1.0
    for method in METHODS:
        for setting in ("clean", "mixtures"):
            metrics = json.loads((a / f"compare/{method}/{setting}/test_metrics.json").read_text())
            assert metrics["n_samples"] == 6.0  # 3 classes x 2 clips of test fold 5
            assert "FF" in metrics and "random_FF" in metrics and "loc_precision" in metrics
    # the clips shown: one per class (--n_saved_per_class 1), the same ids for every method
    shown = {
        method: sorted(p.name for p in (a / f"compare/{method}/clean/interpretations").iterdir())
        for method in METHODS
    }
    classes = {name.split("_true-")[1].split("_pred-")[0] for name in shown["L-MAC"]}
    assert len(shown["L-MAC"]) == 2 and len(classes) == 2, shown["L-MAC"]
    ids = {method: [name.split("_true-")[0] for name in names] for method, names in shown.items()}
    assert all(clips == ids["L-MAC"] for clips in ids.values()), ids  # AMT: other classifiers
    for setting in ("wham", "mixtures", "LJSpeech", "white_noise"):  # the published protocol
        assert (a / f"lmac_eval/{setting}/test_metrics.json").is_file()
    assert list((a / "lmac_single_file").rglob("*.wav"))  # the one-file interpretation
    # the report: every method's rows, in both settings, and the same clips side by side
    summary = (a / "report/summary.md").read_text(encoding="utf-8")
    for method in METHODS:
        assert summary.count(f"| compare/{method} (") == 2, method
    assert "## Warnings" not in summary  # the NMF dictionary's losses are no warning
    index = (a / "report/index.html").read_text(encoding="utf-8")
    assert "<audio" in index and "Same clips across methods" in index
    assert f"Report: {demo_runs[1]}/report/index.html" in stdout  # run_demo.sh's last line


def test_demo_is_deterministic(demo_runs):
    a, b, _, _ = demo_runs
    first, second = _metrics_files(a), _metrics_files(b)
    assert len(first) >= 25 and sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name]]
    assert not different, f"test_metrics.json differ between two identical runs: {different}"


def test_demo_rerun_skips_done_steps(demo_runs, capsys):
    a = demo_runs[0]
    before = _metrics_files(a)
    timings = _demo().main([str(a), "--size", "tiny"])
    out = capsys.readouterr().out
    assert out.count("done already") == len(_demo().steps(str(a), "tiny")) - 1  # all but report
    assert _metrics_files(a) == before and "report" in timings


def test_demo_rejects_unknown_size():
    with pytest.raises(SystemExit):  # argparse: before any folder is made
        _demo().main(["/nonexistent/demo", "--size", "huge"])
    assert not Path("/nonexistent/demo").exists()
