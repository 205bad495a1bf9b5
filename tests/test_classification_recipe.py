"""End-to-end tests of recipes/ESC50/classification/train.py on the tiny synthetic ESC-50 set.

Tiny backbones, 1 s clips, 1-2 epochs: these check the plumbing (manifests, training,
checkpointing and resuming, testing with the best checkpoint, export), not the accuracy;
docs/CLASSIFIERS.md reports the accuracy runs.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from helpers import load_script
from hyperpyyaml import load_hyperpyyaml

from audio_interpretability.brains.classifier import ClassifierBrain, classification_report
from audio_interpretability.checkpoints import load_classifier

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 5  # tiny_esc50: 5 classes x 2 clips x 5 folds, 1 s at 16 kHz
TINY = {
    "cnn14": ["--base_channels", "2", "--emb_dim", "16", "--n_mels", "32"],
    "focalnet": [
        "--img_size", "32", "--embed_dim", "8", "--depths", "[1, 1]", "--drop_path_rate", "0.0",
    ],
    "vit": [
        "--img_size", "32", "--patch_size", "8", "--embed_dim", "16", "--depth", "1",
        "--num_heads", "2",
    ],
}  # fmt: skip


def _load_recipe():
    module = load_script(
        "classification_train", ROOT / "recipes" / "ESC50" / "classification" / "train.py"
    )
    return module


recipe = _load_recipe()


def argv(model, data_folder, out, *extra, epochs=1, device="cpu"):
    """Command line for a tiny ``model`` run writing under ``out``."""
    return [
        str(ROOT / "hparams" / f"classifier_{model}.yaml"),
        "--data_folder", str(data_folder),
        "--output_folder", str(out / "exp"),
        "--pretrained_folder", str(out / "pretrained"),
        "--out_n_neurons", str(N_CLASSES),
        "--number_of_epochs", str(epochs),
        "--batch_size", "10",
        "--device", str(device),
        "--noprogressbar",
        *TINY[model],
        *extra,
    ]  # fmt: skip


def checkpoints(save_folder: Path) -> list[Path]:
    return sorted(save_folder.glob("CKPT+*"))


def counter(ckpt: Path) -> int:
    return int((ckpt / "counter.ckpt").read_text())


@pytest.fixture(scope="module")
def one_epoch_cnn14(tiny_esc50, tmp_path_factory):
    """A 1-epoch tiny CNN14 run (its folder is copied by tests that modify it)."""
    out = tmp_path_factory.mktemp("cnn14_one_epoch")
    torch.manual_seed(0)
    result = recipe.main(argv("cnn14", tiny_esc50, out, epochs=1))
    return out, result


def test_train_test_export(one_epoch_cnn14):
    out, result = one_epoch_cnn14
    exp = out / "exp"
    metrics = json.loads((exp / "test_metrics.json").read_text())
    assert result["test_metrics"] == str(exp / "test_metrics.json")
    names = [f"{k}" for k in metrics["class_names"]]
    assert len(names) == N_CLASSES and len(set(names)) == N_CLASSES
    cm = torch.tensor(metrics["confusion_matrix"])
    assert cm.shape == (N_CLASSES, N_CLASSES)
    assert metrics["n_samples"] == int(cm.sum()) == 10  # fold 5: 5 classes x 2 clips
    assert cm.sum(dim=1).tolist() == [2] * N_CLASSES
    assert metrics["accuracy"] == pytest.approx(float(cm.trace()) / 10)
    assert set(metrics["per_class_accuracy"]) == set(names)
    for i, name in enumerate(names):
        assert metrics["per_class_accuracy"][name] == pytest.approx(float(cm[i, i]) / 2)
    assert (exp / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test loss" in (exp / "train_log.txt").read_text()

    # Export: the best checkpoint's weights, the label encoder and the hparams.
    pretrained = out / "pretrained"
    assert sorted(os.listdir(pretrained)) == [
        "classifier.ckpt", "classifier_hparams.yaml", "embedding_model.ckpt", "label_encoder.txt",
    ]  # fmt: skip
    (best,) = checkpoints(exp / "save")
    for name in ("embedding_model.ckpt", "classifier.ckpt"):
        exported = torch.load(pretrained / name, weights_only=True)
        saved = torch.load(best / name, weights_only=True)
        assert exported.keys() == saved.keys()
        assert all(torch.equal(exported[k], saved[k]) for k in saved)
    encoder = (pretrained / "label_encoder.txt").read_text()
    assert all(f"'{n}' => {i}" in encoder for i, n in enumerate(names))

    # The exported hparams rebuild the same architecture, and the weights load into it.
    with open(pretrained / "classifier_hparams.yaml", encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f)
    load_classifier(
        hparams["embedding_model"], hparams["classifier"],
        str(pretrained / "embedding_model.ckpt"), str(pretrained / "classifier.ckpt"),
    )  # fmt: skip


def test_resume_continues_from_checkpoint(one_epoch_cnn14, tiny_esc50, tmp_path):
    source, _ = one_epoch_cnn14
    out = tmp_path / "run"
    shutil.copytree(source, out)
    exp = out / "exp"
    (ckpt1,) = checkpoints(exp / "save")
    assert counter(ckpt1) == 1
    steps1 = torch.load(ckpt1 / "optimizer.ckpt", weights_only=True)["state"][0]["step"]
    assert steps1 == 3  # 30 training clips, batches of 10

    recipe.main(argv("cnn14", tiny_esc50, out, epochs=2))
    log = (exp / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1  # epoch 1 was not trained again
    assert log.count("epoch: 2,") == 1
    latest = max(checkpoints(exp / "save"), key=counter)
    assert counter(latest) == 2
    # Adam's step count continued from the first run's optimizer state.
    steps2 = torch.load(latest / "optimizer.ckpt", weights_only=True)["state"][0]["step"]
    assert steps2 == 2 * steps1


@pytest.mark.parametrize("model", ["focalnet", "vit"])
def test_image_backbones_one_epoch(model, tiny_esc50, tmp_path):
    # Also exercises augment_concat_original: originals + augmented copies, which doubles
    # the batch and needs the labels replicated.
    recipe.main(
        argv(model, tiny_esc50, tmp_path, "--augment_concat_original", "True",
             "--augment_prob", "1.0", epochs=1)
    )  # fmt: skip
    metrics = json.loads((tmp_path / "exp" / "test_metrics.json").read_text())
    assert metrics["n_samples"] == 10
    assert (tmp_path / "pretrained" / "classifier.ckpt").is_file()
    head = torch.load(tmp_path / "pretrained" / "classifier.ckpt", weights_only=True)
    assert head["weight"].shape[0] == N_CLASSES  # CosineHead


def test_wham_training_run(tiny_esc50, tiny_wham, tmp_path):
    recipe.main(
        argv("cnn14", tiny_esc50, tmp_path, "--add_wham_noise", "True",
             "--wham_folder", tiny_wham)
    )  # fmt: skip
    assert (tmp_path / "exp" / "test_metrics.json").is_file()


def test_wham_missing_folder_errors(tiny_esc50, tmp_path):
    with pytest.raises(ValueError, match="--wham_folder"):
        recipe.main(argv("cnn14", tiny_esc50, tmp_path, "--add_wham_noise", "True"))
    missing = str(tmp_path / "no_wham")
    with pytest.raises(FileNotFoundError, match="no_wham"):
        recipe.main(
            argv("cnn14", tiny_esc50, tmp_path, "--add_wham_noise", "True",
                 "--wham_folder", missing)
        )  # fmt: skip


def test_class_count_mismatch_errors(tiny_esc50, tmp_path):
    args = argv("cnn14", tiny_esc50, tmp_path)
    args[args.index("--out_n_neurons") + 1] = "50"
    with pytest.raises(ValueError, match=r"has 5 classes .*--out_n_neurons 5"):
        recipe.main(args)


def _brain(tmp_path, tiny_wham, **overrides):
    with open(ROOT / "hparams" / "classifier_cnn14.yaml", encoding="utf-8") as f:
        hparams = load_hyperpyyaml(
            f,
            {
                "data_folder": str(tmp_path),
                "output_folder": str(tmp_path / "exp"),
                "out_n_neurons": N_CLASSES,
                "base_channels": 2,
                "emb_dim": 16,
                "n_mels": 32,
                "wham_folder": tiny_wham,
                **overrides,
            },
        )
    return ClassifierBrain(modules=hparams["modules"], hparams=hparams, run_opts={"device": "cpu"})


def test_wham_noise_is_mixed_in_training_only(tmp_path, tiny_wham):
    brain = _brain(tmp_path, tiny_wham, add_wham_noise=True, augment_prob=0.0)
    wavs = torch.zeros(2, 16000)
    wavs[:, ::100] = 1.0  # a click train, peak 1
    wavs[1, 8000:] = 0.0  # the second clip is half as long: zero padding
    lens = torch.tensor([1.0, 0.5])
    noisy1, noisy2 = brain.add_noise(wavs, lens), brain.add_noise(wavs, lens)
    assert not torch.allclose(noisy1, noisy2)  # fresh noise for every batch
    assert torch.all(noisy1[1, 8000:] == 0)  # padding stays silent
    clean_part = wavs * noisy1.abs().amax(dim=-1, keepdim=True).reciprocal()
    assert not torch.allclose(noisy1, clean_part)

    class Batch:
        sig = (wavs, lens)

        def to(self, device):
            return self

    brain.modules.eval()
    with torch.no_grad():
        valid = brain.compute_forward(Batch(), sb.Stage.VALID).logits
        valid_again = brain.compute_forward(Batch(), sb.Stage.VALID).logits
        train = brain.compute_forward(Batch(), sb.Stage.TRAIN).logits
    assert torch.equal(valid, valid_again)  # no noise outside training
    assert not torch.allclose(valid, train)


def test_brain_rejects_wrong_number_of_class_names(tmp_path, tiny_wham):
    with pytest.raises(ValueError, match="--out_n_neurons 3"):
        brain = _brain(tmp_path, tiny_wham)
        ClassifierBrain(
            modules=brain.modules, hparams=vars(brain.hparams), run_opts={"device": "cpu"},
            class_names=["a", "b", "c"],
        )  # fmt: skip


def test_classification_report_values():
    report = classification_report(torch.tensor([[2, 1, 0], [0, 3, 0], [0, 0, 0]]), list("abc"))
    assert report["accuracy"] == pytest.approx(5 / 6)
    assert report["per_class_accuracy"] == {"a": pytest.approx(2 / 3), "b": 1.0, "c": None}
    assert report["n_samples"] == 6
    with pytest.raises(ValueError, match="one name per class"):
        classification_report(torch.zeros(3, 3, dtype=torch.long), ["a"])
