"""The Conv2d classifier recipe (hparams/classifier_conv2d.yaml) and its export.

The published ``classification/hparams/conv2d.yaml`` trains SpeechBrain's PIQ
``Conv2dEncoder_v2`` + an ECAPA ``Classifier`` on log1p(|STFT|); PIQ (``piq.yaml``) and L2I
(``l2i_conv2d.yaml``) explain it. One tiny epoch on ``tiny_esc50``, then the exported files load
into the interpretation YAMLs' classifier keys.
"""

import json
from pathlib import Path

import pytest
import torch
from helpers import load_script
from hyperpyyaml import load_hyperpyyaml

from audio_interpretability.checkpoints import load_classifier
from audio_interpretability.models.conv2d import Conv2dEncoder
from audio_interpretability.models.heads import CosineHead

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "hparams" / "classifier_conv2d.yaml"
N_CLASSES = 5  # tiny_esc50: 5 classes x 2 clips x 5 folds, 1 s at 16 kHz
EMB_DIM = 8


def load_train():
    module = load_script(
        "classification_train", ROOT / "recipes" / "ESC50" / "classification" / "train.py"
    )
    return module


@pytest.fixture(scope="module")
def one_epoch(tiny_esc50, tmp_path_factory) -> Path:
    """One tiny epoch of the recipe with the published cyclic schedule; returns its folder."""
    out = tmp_path_factory.mktemp("conv2d_one_epoch")
    torch.manual_seed(0)
    load_train().main(
        [str(YAML), "--data_folder", tiny_esc50, "--output_folder", str(out / "exp"),
         "--pretrained_folder", str(out / "pretrained"), "--out_n_neurons", str(N_CLASSES),
         "--emb_dim", str(EMB_DIM), "--number_of_epochs", "1", "--batch_size", "10",
         "--device", "cpu", "--noprogressbar"]
    )  # fmt: skip
    return out


def test_defaults_are_the_published_conv2d():
    with open(YAML, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, {"data_folder": "unused"})
    assert isinstance(hp["embedding_model"], Conv2dEncoder)
    assert hp["embedding_model"].embedding_dim == 256  # published dim
    head = hp["classifier"]
    assert isinstance(head, CosineHead) and head.lin_blocks == 1 and head.n_classes == 50
    assert (hp["number_of_epochs"], hp["batch_size"], hp["lr"]) == (200, 32, 0.00002)
    assert (hp["base_lr"], hp["max_lr"], hp["step_size"]) == (0.000002, 0.00002, 65000)
    assert hp["lr_schedule"] == "cyclic" and hp["augment_prob"] == 0.0
    assert hp["pretrained_folder"] == "results/pretrained/conv2d"
    # The published use_melspectra: False: the encoder reads X = log1p(|STFT|) as it is.
    spec = hp["frontend"](torch.randn(1, 16000))
    assert spec.X.shape == (1, 87, 513)
    torch.testing.assert_close(hp["embedding_model"].input_from_spectrogram(spec.X), spec.X)


def test_train_test_export(one_epoch):
    metrics = json.loads((one_epoch / "exp" / "test_metrics.json").read_text())
    assert metrics["n_samples"] == 10  # fold 5: 5 classes x 2 clips
    pretrained = one_epoch / "pretrained"
    for name in ("embedding_model.ckpt", "classifier.ckpt", "label_encoder.txt"):
        assert (pretrained / name).is_file()
    head = torch.load(pretrained / "classifier.ckpt", weights_only=True)
    assert head["weight"].shape == (N_CLASSES, 192)  # ECAPA: lin_blocks 1 -> 192
    # The exported hparams rebuild the architecture, and the weights load into it strictly.
    with open(pretrained / "classifier_hparams.yaml", encoding="utf-8") as f:
        hp = load_hyperpyyaml(f)
    load_classifier(hp["embedding_model"], hp["classifier"],
                    str(pretrained / "embedding_model.ckpt"), str(pretrained / "classifier.ckpt"))  # fmt: skip


@pytest.mark.parametrize("yaml", ["l2i_conv2d.yaml", "piq.yaml"])
def test_export_loads_into_the_interpreters(one_epoch, yaml):
    """The classification export is the classifier of l2i_conv2d.yaml and piq.yaml: same
    embedding, same cosines (scale aside), from the interpretation YAML's own keys."""
    pretrained = one_epoch / "pretrained"
    overrides = {"data_folder": "unused", "out_n_neurons": N_CLASSES, "emb_dim": EMB_DIM}
    with open(ROOT / "hparams" / yaml, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, overrides)
    assert isinstance(hp["embedding_model"], Conv2dEncoder)
    load_classifier(hp["embedding_model"], hp["classifier"],
                    str(pretrained / "embedding_model.ckpt"), str(pretrained / "classifier.ckpt"))  # fmt: skip
    with open(pretrained / "classifier_hparams.yaml", encoding="utf-8") as f:
        trained = load_hyperpyyaml(f)
    load_classifier(trained["embedding_model"], trained["classifier"],
                    str(pretrained / "embedding_model.ckpt"), str(pretrained / "classifier.ckpt"))  # fmt: skip
    X = torch.rand(2, 87, 513)
    with torch.no_grad():
        ours = hp["model"].eval()(X)
        ref = trained["model"].eval()(X)
    torch.testing.assert_close(ours.embedding, ref.embedding)
    torch.testing.assert_close(
        ours.logits / hp["classifier"].scale, ref.logits / trained["classifier"].scale
    )
