"""Export / load of the trained classifiers, and the errors users see when it goes wrong."""

import os

import pytest
import torch

from audio_interpretability.checkpoints import export_classifier, load_classifier
from audio_interpretability.models import CosineHead, LinearHead
from audio_interpretability.models.cnn14 import Cnn14


def tiny_cnn14(emb_dim: int = 16, base_channels: int = 2) -> Cnn14:
    return Cnn14(mel_bins=32, emb_dim=emb_dim, base_channels=base_channels)


@pytest.fixture
def exported(tmp_path):
    """A tiny CNN14 + 5-class head exported with an encoder and hparams file."""
    torch.manual_seed(0)
    emb, head = tiny_cnn14(), LinearHead(16, 5)
    with torch.no_grad():  # non-default running stats must round-trip too
        emb.norm0.running_mean.uniform_()
    encoder = tmp_path / "label_encoder.txt"
    encoder.write_text("'dog' => 0\n================\n'starting_index' => 0\n")
    hparams = tmp_path / "hyperparams.yaml"
    hparams.write_text("emb_dim: 16\n")
    paths = export_classifier(emb, head, str(tmp_path / "pretrained"), str(encoder), str(hparams))
    return emb, head, paths


def test_round_trip(exported):
    emb, head, paths = exported
    assert sorted(os.listdir(os.path.dirname(paths["classifier"]))) == [
        "classifier.ckpt",
        "classifier_hparams.yaml",
        "embedding_model.ckpt",
        "label_encoder.txt",
    ]
    torch.manual_seed(1)
    emb2, head2 = tiny_cnn14(), LinearHead(16, 5)
    assert not torch.equal(head2.w.weight, head.w.weight)
    load_classifier(emb2, head2, paths["embedding_model"], paths["classifier"])
    for a, b in zip(
        list(emb.state_dict().values()) + list(head.state_dict().values()),
        list(emb2.state_dict().values()) + list(head2.state_dict().values()),
    ):
        assert torch.equal(a, b)
    x = torch.rand(2, 1, 40, 32)
    emb.eval(), emb2.eval()
    assert torch.equal(head(emb(x.squeeze(1)).embedding), head2(emb2(x.squeeze(1)).embedding))


def test_missing_file_names_file_and_command(exported, tmp_path):
    emb, head, paths = exported
    missing = str(tmp_path / "nowhere" / "embedding_model.ckpt")
    with pytest.raises(FileNotFoundError) as err:
        load_classifier(
            tiny_cnn14(),
            LinearHead(16, 5),
            missing,
            paths["classifier"],
            hint="python recipes/ESC50/classification/train.py hparams/classifier_cnn14.yaml "
            "--data_folder <D>",
        )
    message = str(err.value)
    assert missing in message
    assert "hparams/classifier_cnn14.yaml --data_folder <D>" in message


def test_class_count_mismatch(exported):
    _, _, paths = exported
    with pytest.raises(ValueError, match=r"has 5 classes .*out_n_neurons=10.*--out_n_neurons 5"):
        load_classifier(
            tiny_cnn14(), LinearHead(16, 10), paths["embedding_model"], paths["classifier"]
        )
    # Cosine head too (key "weight" instead of "w.weight" / "w.bias").
    head = CosineHead(16, 4)
    path = os.path.join(os.path.dirname(paths["classifier"]), "cosine.ckpt")
    torch.save(head.state_dict(), path)
    with pytest.raises(ValueError, match=r"has 4 classes .*out_n_neurons=7"):
        load_classifier(tiny_cnn14(), CosineHead(16, 7), paths["embedding_model"], path)


def test_wrong_architecture_size(exported):
    _, _, paths = exported
    with pytest.raises(ValueError) as err:
        load_classifier(
            tiny_cnn14(base_channels=4),
            LinearHead(16, 5),
            paths["embedding_model"],
            paths["classifier"],
        )
    message = str(err.value)
    assert paths["embedding_model"] in message
    assert "shape mismatch" in message and "conv_block1.conv1.weight" in message
    assert "classifier_hparams.yaml" in message  # points at the exported hparams


def test_wrong_architecture_keys(exported):
    _, _, paths = exported
    with pytest.raises(ValueError) as err:
        load_classifier(
            torch.nn.Linear(3, 3),
            LinearHead(16, 5),
            paths["embedding_model"],
            paths["classifier"],
        )
    message = str(err.value)
    assert "missing keys: bias, weight" in message
    assert "unexpected keys:" in message and "(+" in message  # a few names, then a count


def test_corrupt_file(exported):
    emb, head, paths = exported
    with open(paths["classifier"], "wb") as f:
        f.write(b"not a checkpoint at all")
    before = {k: v.clone() for k, v in emb.state_dict().items()}
    with pytest.raises(ValueError, match=r"corrupt or not a torch state_dict"):
        load_classifier(emb, head, paths["embedding_model"], paths["classifier"])
    # Nothing was loaded: both files are checked before either module is touched.
    assert all(torch.equal(before[k], v) for k, v in emb.state_dict().items())


def test_not_a_state_dict(exported):
    emb, head, paths = exported
    torch.save([1, 2, 3], paths["classifier"])
    with pytest.raises(ValueError, match=r"holds a list, not a state_dict"):
        load_classifier(emb, head, paths["embedding_model"], paths["classifier"])


def test_export_missing_label_encoder(tmp_path):
    with pytest.raises(FileNotFoundError, match="label_encoder"):
        export_classifier(
            torch.nn.Linear(2, 2),
            torch.nn.Linear(2, 2),
            str(tmp_path),
            label_encoder_file=str(tmp_path / "nope.txt"),
        )


def test_no_path_given(exported):
    emb, head, paths = exported
    with pytest.raises(ValueError, match="embedding_model_path and classifier_model_path"):
        load_classifier(emb, head, paths["embedding_model"], None)
