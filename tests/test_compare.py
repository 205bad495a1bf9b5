"""compare.py (every interpreter on one classifier, one table): on tiny synthetic data, with a
random tiny CNN14 (base_channels 2, emb_dim 64), L-MAC trained one epoch by train_lmac.py,
PIQ loaded from a given checkpoint and Saliency, it writes comparison.json / .md / masks.png with a row per
method plus the random mask; bad input fails before any work."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import load_script
from hyperpyyaml import load_hyperpyyaml

from audio_interpretability.checkpoints import export_classifier

ROOT = Path(__file__).resolve().parents[1]
TINY_CNN14 = {"base_channels": 2, "emb_dim": 64}


def load_compare():
    module = load_script("compare_recipe", ROOT / "recipes" / "ESC50" / "interpret" / "compare.py")
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """A random tiny CNN14 (5 classes) and a random PIQ decoder, built from piq_cnn14.yaml."""
    folder = tmp_path_factory.mktemp("compare_ckpt")
    torch.manual_seed(0)
    values = {"data_folder": str(folder), "output_folder": str(folder), "out_n_neurons": 5}
    with open(ROOT / "hparams" / "piq_cnn14.yaml", encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, {**values, **TINY_CNN14, "K": 16})
    paths = export_classifier(hp["embedding_model"], hp["classifier"], str(folder))
    paths["piq"] = str(folder / "psi_model.ckpt")
    torch.save(hp["psi_model"].state_dict(), paths["piq"])
    return paths


def argv(data: str, ckpt: dict, out: Path, methods: str, **extra) -> list[str]:
    options = {
        "data_folder": data,
        "out_n_neurons": 5,
        "embedding_model_path": ckpt["embedding_model"],
        "classifier_model_path": ckpt["classifier"],
        "output_folder": out,
        "classifier_overrides": json.dumps(TINY_CNN14),
        "methods": methods,
        "number_of_epochs": 1,
        "batch_size": 10,
        "n_sanity_clips": 3,
        "n_figure_clips": 2,
        "curve_steps": 4,
        "num_threads": 0,
        **extra,
    }
    args = [str(ROOT / "hparams" / "compare.yaml"), "--device", "cpu", "--noprogressbar"]
    return args + [x for k, v in options.items() for x in (f"--{k}", str(v))]


def test_compare_tiny(tmp_path, tiny_esc50, checkpoints):
    methods = json.dumps(
        [
            {
                "name": "L-MAC",
                "yaml": "lmac_cnn14.yaml",
                "int_method": "lmac",
                "overrides": {"decoder_width": 16, "save_interpretations": False},
                "pretrained_interpreter": None,
            },
            {
                "name": "PIQ",
                "yaml": "piq_cnn14.yaml",
                "int_method": "piq",
                "overrides": {"K": 16, "save_interpretations": False},
                "pretrained_interpreter": checkpoints["piq"],
            },
            {
                "name": "Saliency",
                "yaml": "gradient_cnn14.yaml",
                "int_method": "saliency",
                "overrides": {"save_interpretations": False},
            },
        ]
    )
    out = tmp_path / "out"
    report = load_compare().main(argv(tiny_esc50, checkpoints, out, methods))

    # L-MAC was trained by its recipe, then both evaluated by eval.py
    assert (out / "L-MAC" / "train" / "save" / "psi_model.ckpt").is_file()
    assert not (out / "PIQ" / "train").exists()
    for name in ("L-MAC", "PIQ", "Saliency"):
        assert (out / name / "eval" / "clean" / "test_metrics.json").is_file()
        assert (out / name / "eval" / "mixtures" / "test_metrics.json").is_file()

    saved = json.loads((out / "comparison.json").read_text())
    assert saved["rows"] == report["rows"]
    assert list(saved["rows"]) == ["clean", "mixtures"]
    clean = saved["rows"]["clean"]
    assert list(clean) == ["L-MAC", "PIQ", "Saliency", "random mask"]
    for name, row in clean.items():
        keys = ["fid_in", "FF", "AI", "AD", "SPS", "loc_iou", "deletion_auc", "insertion_auc"]
        if name != "random mask":
            keys.append("randomization_spearman")
        assert all(math.isfinite(row[k]) for k in keys), (name, row)
    for name in ("L-MAC", "PIQ", "Saliency"):
        sanity = saved["methods"][name]["sanity"]
        assert 0.0 <= sanity["deletion_auc"] <= 1.0 and 0.0 <= sanity["insertion_auc"] <= 1.0
        assert sanity["randomization_stages"][0]["group"] == "original"
        assert len(saved["methods"][name]["sanity_clips"]) == 3
    # the sanity columns are the clean clips': empty in the OOD table
    assert saved["rows"]["mixtures"]["PIQ"]["deletion_auc"] is None

    table = (out / "comparison.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    for label in ("Fid-In", "FF", "AI %", "AD %", "AG %", "SPS", "COMP", "loc. precision",
                  "loc. recall", "loc. IoU", "energy in event", "deletion AUC", "insertion AUC",
                  "rand. Spearman"):  # fmt: skip
        assert label in header
    assert table.count("| random mask |") == 2 and table.count("| L-MAC |") == 2
    png = out / "masks.png"
    assert png.stat().st_size > 0 and png.read_bytes()[:4] == b"\x89PNG"

    # a second run reuses the training and the evaluations (their outputs exist)
    psi = out / "L-MAC" / "train" / "save" / "psi_model.ckpt"
    written = (
        psi.stat().st_mtime_ns,
        (out / "PIQ" / "eval" / "eval_metrics.json").stat().st_mtime_ns,
    )
    again = load_compare().main(argv(tiny_esc50, checkpoints, out, methods))
    assert again["rows"] == report["rows"]
    assert written == (
        psi.stat().st_mtime_ns,
        (out / "PIQ" / "eval" / "eval_metrics.json").stat().st_mtime_ns,
    )


def test_bad_input_fails_before_any_work(tmp_path, tiny_esc50, checkpoints):
    compare = load_compare()
    good = '[{"name": "G", "yaml": "lmac_cnn14.yaml", "int_method": "lmac"}]'
    missing = {**checkpoints, "classifier": str(tmp_path / "nope.ckpt")}
    with pytest.raises(FileNotFoundError, match="--classifier_model_path"):
        compare.main(argv(tiny_esc50, missing, tmp_path / "a", good))
    unknown = '[{"name": "X", "yaml": "lmac_cnn14.yaml", "int_method": "magic"}]'
    with pytest.raises(ValueError, match="unknown int_method 'magic'"):
        compare.main(argv(tiny_esc50, checkpoints, tmp_path / "b", unknown))
    no_yaml = '[{"name": "X", "yaml": "nope.yaml", "int_method": "lmac"}]'
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        compare.main(argv(tiny_esc50, checkpoints, tmp_path / "c", no_yaml))
    no_psi = (
        '[{"name": "X", "yaml": "lmac_cnn14.yaml", "int_method": "lmac", '
        f'"pretrained_interpreter": "{tmp_path}/none.ckpt"}}]'
    )
    with pytest.raises(FileNotFoundError, match="pretrained_interpreter"):
        compare.main(argv(tiny_esc50, checkpoints, tmp_path / "d", no_psi))
    twice = f"[{good[1:-1]}, {good[1:-1]}]"
    with pytest.raises(ValueError, match="used twice"):
        compare.main(argv(tiny_esc50, checkpoints, tmp_path / "e", twice))
    for folder in "abcde":  # nothing trained, evaluated or written beyond the experiment copy
        assert not (tmp_path / folder / "G").exists() and not (tmp_path / folder / "X").exists()
