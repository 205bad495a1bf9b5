"""The listenable HTML report (audio_interpretability/report.py): discovery of the evaluations
under an output folder, index.html (self-contained, escaped), summary.md, clear errors; on a
fake tree written here, on a real tiny eval.py run, and in headless Chromium when installed."""

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_interpretability import report
from audio_interpretability.viz import plot_interpretation, save_interpretation, save_wav

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
HEADER = "# Generated 2026-11-30 from:\n# /somewhere/hparams/{yaml}\n# yamllint disable\n"
#: An id that would break the page if it were not escaped (no "/": it is a folder name).
NASTY_ID = '1-<script>alert("x")&-A-0'


class _Page(HTMLParser):
    """Collects img / audio sources, script tags, and the metrics tables' cell texts."""

    def __init__(self):
        super().__init__()
        self.sources = {"img": [], "audio": []}
        self.scripts = 0
        self.tables = []  # one per <table class="metrics">: rows of cell texts
        self._table = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.sources:
            self.sources[tag].append(attrs["src"])
        elif tag == "script":
            self.scripts += 1
        elif tag == "table" and attrs.get("class") == "metrics":
            self._table = []
            self.tables.append(self._table)
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self._table[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _parse(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    return page


def _metrics(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    keys = [c.key for c in report.COLUMNS]
    values = {k: float(rng.uniform(0, 1)) for k in keys}
    values.update({f"random_{k}": float(rng.uniform(0, 1)) for k in keys if k != "accuracy"})
    values.update({"n_samples": 10.0, "loss": 0.1, "AI": 40.0 + seed})
    return values


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _save_clip(folder: Path, name: str, seconds: float) -> None:
    wav = 0.1 * np.sin(np.arange(int(seconds * SR)) / 7.0).astype(np.float32)
    panels = [("X", np.random.default_rng(0).random((20, 33)))]
    save_interpretation(folder, name, wav, 0.5 * wav, SR, panels)


def make_tree(root: Path) -> dict:
    """A fake output folder: two interpreter runs sharing clip ids, a classifier, oddities.

    Returns ``{(run, setting): metrics}`` of the interpreter evaluations written."""
    written = {}
    # a training recipe's run: main test with WHAM! noise at the run folder, clean/ beside it
    lmac = root / "lmac"
    lmac.mkdir(parents=True)
    (lmac / "hyperparams.yaml").write_text(
        HEADER.format(yaml="lmac_cnn14.yaml") + "add_wham_noise: True\nint_method: lmac  # x\n"
    )
    for i, (folder, setting) in enumerate([(lmac, "wham"), (lmac / "clean", "clean")]):
        written["lmac", setting] = _metrics(i)
        _write_json(folder / "test_metrics.json", written["lmac", setting])
    # L-MAC fine-tuned in the same run folder (train_lmac.py --finetuning True)
    finetuning = [(lmac / "finetuning", "wham"), (lmac / "finetuning" / "clean", "clean")]
    for i, (folder, setting) in enumerate(finetuning):
        written["lmac/finetuning", setting] = _metrics(30 + i)
        _write_json(folder / "test_metrics.json", written["lmac/finetuning", setting])
    for clip, seconds in [
        ("1-10-A-0_true-dog_pred-dog", 1.0),
        ("1-11-A-1_true-rain_pred-dog", 1.5),
    ]:
        _save_clip(lmac / "clean" / "interpretations", clip, seconds)
    # an eval.py run: settings as sub-folders, no metrics at the run folder
    amt = root / "amt_focalnet"
    amt.mkdir()
    (amt / "hyperparams.yaml").write_text(
        HEADER.format(yaml="amt_focalnet.yaml") + "int_method: amt\n"
    )
    for i, setting in enumerate(["clean", "mixtures"]):
        written["amt_focalnet", setting] = _metrics(10 + i)
        _write_json(amt / setting / "test_metrics.json", written["amt_focalnet", setting])
    _save_clip(amt / "clean" / "interpretations", "1-10-A-0_true-dog_pred-rain", 1.0)
    # a clip id that must be escaped (written by hand: save_interpretation refuses such names)
    nasty = amt / "clean" / "interpretations" / f"{NASTY_ID}_true-a&b_pred-<i>c"
    nasty.mkdir()
    save_wav(nasty / "original.wav", np.zeros(SR // 2, np.float32), SR)
    save_wav(nasty / "interpretation.wav", np.zeros(SR // 2, np.float32), SR)
    plot_interpretation(nasty / f"{nasty.name}.png", [("X", np.ones((4, 5)))])
    # a classifier run
    clf = root / "classifier_cnn14"
    clf.mkdir()
    (clf / "hyperparams.yaml").write_text(HEADER.format(yaml="classifier_cnn14.yaml"))
    _write_json(clf / "test_metrics.json", {"accuracy": 0.875, "n_samples": 80, "error": 0.125})
    # oddities: an NMF run's metrics, a setting of an unknown name
    _write_json(root / "nmf" / "test_metrics.json", {"recons_err": 0.3})
    written["amt_focalnet", "odd_setting"] = _metrics(20)
    _write_json(amt / "odd_setting" / "test_metrics.json", written["amt_focalnet", "odd_setting"])
    return written


@pytest.fixture(scope="module")
def _fake_tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fake") / "results"
    return root, make_tree(root)


@pytest.fixture
def fake_tree(_fake_tree, tmp_path) -> tuple[Path, dict]:
    """A copy of the fake output folder under ``tmp_path`` (figures drawn once per module)."""
    root = tmp_path / "results"
    shutil.copytree(_fake_tree[0], root)
    return root, _fake_tree[1]


def _inside(folder: Path, src: str) -> Path:
    assert not re.match(r"^[a-z]+:", src) and not src.startswith("/"), src  # relative links only
    from urllib.parse import unquote

    path = (folder / unquote(src)).resolve()
    assert path.is_file() and path.is_relative_to(folder.resolve()), src
    return path


def test_report_on_fake_tree(fake_tree):
    root, written = fake_tree
    index = report.build_report(root, n_clips=4)
    out = root / "report"
    assert index == out / "index.html"
    text = index.read_text(encoding="utf-8")
    page = _parse(index)

    # every image and player is a file inside the report folder (a copy, not the original)
    assert len(page.sources["img"]) >= 4 and len(page.sources["audio"]) >= 8
    for src in page.sources["img"] + page.sources["audio"]:
        assert _inside(out, src).is_relative_to((out / "media").resolve())

    # one table per setting, a row per run with the JSON's values (and its baselines beneath)
    found = report.discover(root, exclude=[out])
    settings = list(dict.fromkeys(e.setting for e in found.evaluations))
    assert settings == ["clean", "wham", "mixtures", "odd_setting"]
    assert len(page.tables) == len(settings)
    for setting, table in zip(settings, page.tables):
        header = [re.sub(r" [↑↓]$", "", h) for h in table[0]]
        rows = {row[0]: row for row in table[1:]}
        runs = [run for run, s in written if s == setting]
        method = {"lmac": "lmac", "lmac/finetuning": "lmac", "amt_focalnet": "amt"}
        for run in runs:
            row = rows[f"{run} ({method[run]})"]
            for column in report.COLUMNS:
                value = written[run, setting][column.key]
                assert row[header.index(column.label)] == report.format_value(value)
        baselines = [r for r in table[1:] if r[0].startswith("↳ random")]
        assert len(baselines) == len(runs)
    # directions and tooltips in the headers
    assert 'title="AD: average drop' in text and "AD ↓" in text and "FF ↑" in text
    # classifier accuracy, warnings for the oddities, true / predicted classes
    assert "classifier_cnn14" in text and "0.875" in text
    assert any("odd_setting" in w for w in found.warnings)
    assert not any("finetuning" in w for w in found.warnings)
    assert any("nmf" in w and "neither" in w for w in found.warnings)
    assert "predicted <i>rain</i>" in text

    # the same clip id saved by both runs in "clean", side by side
    side = text[text.index('id="side-by-side"') :]
    assert "1-10-A-0" in side and "lmac (lmac)" in side and "amt_focalnet (amt)" in side
    assert "1-11-A-1" not in side

    # summary.md: the same tables, the files shown
    summary = (out / "summary.md").read_text(encoding="utf-8")
    for setting in settings:
        assert f"## {setting}" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| lmac (lmac) | 10 |"))
    assert report.format_value(written["lmac", "clean"]["FF"]) in row
    assert "media/lmac/clean/" in summary and "interpretation.wav" in summary


def test_report_escapes_text(fake_tree):
    root, _ = fake_tree
    index = report.build_report(root)
    text = index.read_text(encoding="utf-8")
    page = _parse(index)
    assert page.scripts == 0 and "<script>" not in text and "<i>c" not in text
    assert html.escape(NASTY_ID) in text
    # its files were copied under a safe name and still resolve
    nasty = [s for s in page.sources["audio"] if "script" in s]
    assert nasty and all(_inside(index.parent, s) for s in nasty)
    assert all(re.fullmatch(r"[A-Za-z0-9._/-]+", s) for s in page.sources["audio"])


def test_report_rerun_replaces_media_and_leaves_no_temporaries(fake_tree):
    root, _ = fake_tree
    report.build_report(root, n_clips=4)
    report.build_report(root, n_clips=1)  # fewer clips: the old copies go
    out = root / "report"
    shown = _parse(out / "index.html").sources["audio"]
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav"))
    assert copied == sorted(set(shown))
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "media", "summary.md"]


def test_report_errors_and_cli(tmp_path, fake_tree, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no test_metrics.json"):
        report.build_report(empty)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        report.build_report(tmp_path / "missing")
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(empty)])
    assert exit_info.value.code == 2 and "no test_metrics.json" in capsys.readouterr().err
    # the command prints the index path; --out elsewhere
    root, _ = fake_tree
    index = report.main([str(root), "--out", str(tmp_path / "rep"), "--clips", "1"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "rep" / "index.html") == str(index)


def test_directions_match_metrics_doc():
    """Each column's ↑ / ↓ is the "better" of docs/METRICS.md's tables."""
    doc = (ROOT / "docs" / "METRICS.md").read_text(encoding="utf-8")
    better = dict(re.findall(r"^\| `(\w+)` \|.*\| (higher|lower) \|$", doc, flags=re.MULTILINE))
    better.update({"SPS": "higher", "COMP": "lower"})  # given in prose there
    assert "higher = sparser" in doc and "lower = simpler" in doc
    for column in report.COLUMNS:
        assert better[column.key] == ("higher" if column.higher_is_better else "lower"), column


def test_report_on_real_tiny_runs(tmp_path, tiny_esc50, tiny_wham):
    """eval.py (AMT on FocalNet, Grad-CAM on CNN14, tiny random models) -> report."""
    import test_interpreters_contract as contract

    root = tmp_path / "results"
    for name in ("amt_focalnet", "gradcam"):
        contract.run_eval(name, tmp_path / name, tiny_esc50, tiny_wham, add_wham_noise=True)
        shutil.move(tmp_path / name / "out", root / name)
    index = report.build_report(root, n_clips=2)
    page = _parse(index)
    table = page.tables[0]
    assert [row[0] for row in table[1:] if not row[0].startswith("↳")] == [
        "amt_focalnet (amt)",
        "gradcam (gradcam)",
    ]
    header = [re.sub(r" [↑↓]$", "", h) for h in table[0]]
    for row, run in zip(
        [r for r in table[1:] if not r[0].startswith("↳")], ["amt_focalnet", "gradcam"]
    ):
        metrics = json.loads((root / run / "wham" / "test_metrics.json").read_text())
        assert row[header.index("FF")] == report.format_value(metrics["FF"])
    assert len(page.sources["img"]) == 4 + 4  # 2 clips x 2 runs, and both clips side by side
    for src in page.sources["img"] + page.sources["audio"]:
        _inside(index.parent, src)
    assert "Same clips across methods" in index.read_text(encoding="utf-8")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


_CHECK_JS = """<script>
(function () {
  function done(result) {
    if (document.getElementById("report-check")) return;
    var pre = document.createElement("pre");
    pre.id = "report-check";
    pre.textContent = JSON.stringify(result);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", function () {
    var images = Array.from(document.images).map(function (i) {
      return {src: i.getAttribute("src"), width: i.naturalWidth, complete: i.complete};
    });
    var players = Array.from(document.querySelectorAll("audio")).map(function (a) {
      return new Promise(function (resolve) {
        function finish() {
          resolve({src: a.getAttribute("src"), duration: a.duration,
                   error: a.error ? a.error.code : null});
        }
        if (a.readyState >= 1) { finish(); return; }
        a.addEventListener("loadedmetadata", finish);
        a.addEventListener("error", finish);
        a.load();
      });
    });
    Promise.all(players).then(function (audios) { done({images: images, audios: audios}); });
  });
})();
</script>"""


def test_report_in_browser(tmp_path, fake_tree):
    """index.html in headless Chromium: every image decodes, every player loads its WAV with
    the WAV's duration. The page is a copy of index.html with a script that writes what it
    found into the DOM, read back with --dump-dom."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium / chromium-browser on PATH (e.g. apt-get install chromium)")
    root, _ = fake_tree
    index = report.build_report(root)
    check = index.with_name("check.html")
    check.write_text(index.read_text(encoding="utf-8").replace("</body>", _CHECK_JS + "</body>"))
    command = [
        chromium, "--headless", "--disable-gpu", "--no-sandbox", "--mute-audio",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000",
        "--dump-dom", check.as_uri(),
    ]  # fmt: skip
    ran = subprocess.run(command, capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="report-check">(.*?)</pre>', ran.stdout, flags=re.DOTALL)
    assert match, (
        f"the check script wrote no result (exit {ran.returncode}); chromium printed:\n"
        f"{ran.stdout[-1500:]}\n{ran.stderr[-1500:]}"
    )
    result = json.loads(html.unescape(match.group(1)))

    page = _parse(index)
    assert [i["src"] for i in result["images"]] == page.sources["img"]
    assert [a["src"] for a in result["audios"]] == page.sources["audio"]
    for image in result["images"]:
        assert image["complete"] and image["width"] > 0, image
    for audio in result["audios"]:
        expected = sf.info(str(_inside(index.parent, audio["src"]))).duration
        assert audio["error"] is None and abs(audio["duration"] - expected) <= 0.05, audio
