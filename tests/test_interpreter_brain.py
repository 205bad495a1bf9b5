"""InterpreterBrain base: dummy interpreters run through ``evaluate`` on synthetic data."""

import json

import pytest
import speechbrain as sb
import torch
from speechbrain.utils.train_logger import FileTrainLogger

from audio_interpretability.brains.interpreter import InterpreterBrain, MaskOutput
from audio_interpretability.data.esc50 import dataio_prep, prepare_esc50
from audio_interpretability.features import Frontend
from audio_interpretability.models import AudioClassifier, LinearHead
from audio_interpretability.models.cnn14 import Cnn14


class OnesInterpreter(InterpreterBrain):
    """Keeps every bin: the masked-in input IS the input."""

    def make_mask(self, spec, clf):
        return MaskOutput(torch.ones_like(spec.X), {})


class ZerosInterpreter(InterpreterBrain):
    """Removes every bin."""

    def make_mask(self, spec, clf):
        return MaskOutput(torch.zeros_like(spec.X), {})


class TruthInterpreter(InterpreterBrain):
    """Cheats with the ground truth (only to test localisation bookkeeping)."""

    def make_mask(self, spec, clf):
        return MaskOutput(self._truth, {})

    def compute_forward(self, batch, stage):
        self._truth = self.ground_truth(batch.to(self.device), None, None)
        return super().compute_forward(batch, stage)


class BandTruthInterpreter(TruthInterpreter):
    """The truth mask, explaining a "classifier" that scores the energy of 5 frequency bands
    (so that clips of the tiny set get different decisions, unlike a random CNN14's)."""

    def classifier_forward(self, X, return_maps=False):
        from audio_interpretability.data.synthetic import class_params

        out = super().classifier_forward(X, return_maps)
        spectrum = X.float().amax(dim=1)  # (B, bins)
        bins = [round(class_params(k)["freq"] * 1024 / 16000) for k in range(5)]
        bands = torch.stack([spectrum[:, b - 1 : b + 2].mean(dim=1) for b in bins], dim=1)
        return out._replace(logits=10.0 * bands)  # (B, 5)


class BadShapeInterpreter(InterpreterBrain):
    def make_mask(self, spec, clf):
        return MaskOutput(torch.ones_like(spec.X[:, :-1]), {})


@pytest.fixture(scope="module")
def data(tiny_esc50, tmp_path_factory):
    folder = tmp_path_factory.mktemp("manifests")
    paths = {s: str(folder / f"{s}.json") for s in ("train", "valid", "test")}
    prepare_esc50(tiny_esc50, paths["train"], paths["valid"], paths["test"])
    return dataio_prep(
        {"test": paths["test"]}, 16000, str(folder / "label_encoder.txt"), str(folder / "cache")
    )


def make_brain(cls, out, **overrides):
    torch.manual_seed(0)
    frontend = Frontend(sample_rate=16000, n_mels=32)
    embedding_model = Cnn14(mel_bins=32, emb_dim=32, base_channels=4)
    classifier = LinearHead(input_size=32, n_classes=5)
    hparams = {
        "frontend": frontend,
        "embedding_model": embedding_model,
        "classifier": classifier,
        "model": AudioClassifier(embedding_model, classifier),
        "embedding_model_path": None,
        "classifier_model_path": None,
        "output_folder": str(out),
        "seed": 3,
        "save_interpretations": True,
        "n_saved_interpretations": 3,
        "add_wham_noise": False,
        "wham_folder": None,
        "wham_split": "tt",
        "wham_snr_db": 0.0,
        "random_baseline": True,
        "loc_threshold": 0.5,
        "train_logger": FileTrainLogger(str(out / "log.txt")),
    }
    hparams.update(overrides)
    return cls(modules={}, hparams=hparams, run_opts={"device": "cpu", "noprogressbar": True})


def evaluate(brain, data, batch_size=4):
    brain.label_encoder = data["label_encoder"]
    brain.evaluate(data["test"], test_loader_kwargs={"batch_size": batch_size})
    with open(brain.metrics_folder / "test_metrics.json") as f:
        return json.load(f)


def test_all_ones_mask_keeps_decision(data, tmp_path):
    metrics = evaluate(make_brain(OnesInterpreter, tmp_path), data)
    assert metrics["n_samples"] == 10  # 5 classes x 2 clips in test fold 5
    assert metrics["fid_in"] == 1.0  # masked-in input == input
    assert metrics["AI"] == 0.0  # p_in_c == p_c: no strict increase
    assert metrics["AD"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["in_drop"] == pytest.approx(0.0, abs=1e-6)
    for key, value in metrics.items():
        assert value == value and abs(value) != float("inf"), key  # finite
    # all-ones mask: every stem-based truth bin is covered, recall 1
    assert metrics["loc_recall"] == 1.0
    assert {"random_AI", "random_FF", "random_loc_iou", "SPS", "COMP"} <= metrics.keys()


def test_zeros_and_truth_masks(data, tmp_path):
    zeros = evaluate(make_brain(ZerosInterpreter, tmp_path / "z"), data)
    assert zeros["loc_recall"] == 0.0
    assert zeros["SPS"] == pytest.approx(0.0, abs=1e-6)
    truth = evaluate(make_brain(TruthInterpreter, tmp_path / "t"), data)
    assert truth["loc_iou"] == 1.0 and truth["loc_precision"] == 1.0
    assert truth["loc_energy_in"] == pytest.approx(1.0)
    # a random mask of the same sparsity localises far worse than the truth itself
    assert truth["random_loc_iou"] < 0.5


def test_collapse_detectors(data, tmp_path):
    """A constant mask shows as input-independent; the truth mask follows each event and
    another clip's (swapped) truth mask localises worse than the clip's own."""
    ones = evaluate(make_brain(OnesInterpreter, tmp_path / "o"), data)
    assert ones["mask_input_dependence"] == 0.0
    assert ones["loc_time_corr"] == 0.0  # the same in every frame: no time profile
    truth = evaluate(make_brain(BandTruthInterpreter, tmp_path / "t"), data)
    assert truth["mask_input_dependence"] > 0.5
    assert truth["loc_time_corr"] == pytest.approx(1.0)
    assert {"swap_FF", "swap_fid_in", "swap_AI", "swap_AD", "swap_loc_iou"} <= truth.keys()
    assert truth["swap_loc_iou"] < 0.5 * truth["loc_iou"]
    assert truth["swap_loc_time_corr"] < 0.5


def test_batched_metrics_equal_per_item(data, tmp_path):
    a = evaluate(make_brain(OnesInterpreter, tmp_path / "a", random_baseline=False), data, 1)
    b = evaluate(make_brain(OnesInterpreter, tmp_path / "b", random_baseline=False), data, 5)
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-4), key


def test_saved_interpretations_are_listenable(data, tmp_path):
    brain = make_brain(OnesInterpreter, tmp_path)
    evaluate(brain, data)
    folders = sorted((tmp_path / "interpretations").iterdir())
    assert len(folders) == 3  # n_saved_interpretations
    assert all("_true-" in f.name and "_pred-" in f.name for f in folders)
    import soundfile

    original, sr = soundfile.read(next(folders[0].glob("original.wav")))
    interp, _ = soundfile.read(next(folders[0].glob("interpretation.wav")))
    assert sr == 16000 and len(original) == len(interp) == 16000
    # all-ones mask: the interpretation is the input itself
    assert abs(original - interp)[200:-200].max() < 1e-3
    assert list(folders[0].glob("*.png"))


def test_wham_noise_in_evaluation(data, tmp_path, tiny_wham):
    metrics = evaluate(
        make_brain(OnesInterpreter, tmp_path, add_wham_noise=True, wham_folder=tiny_wham), data
    )
    assert metrics["fid_in"] == 1.0 and metrics["n_samples"] == 10


def test_clear_errors(data, tmp_path):
    with pytest.raises(ValueError, match="missing from the YAML: random_baseline"):
        hp = make_brain(OnesInterpreter, tmp_path).hparams.__dict__.copy()
        hp.pop("random_baseline")
        OnesInterpreter(modules={}, hparams=hp, run_opts={"device": "cpu"})
    with pytest.raises(ValueError, match="make_mask returned a mask of shape"):
        evaluate(make_brain(BadShapeInterpreter, tmp_path), data)
    with pytest.raises(ValueError, match="wham_folder"):
        evaluate(make_brain(OnesInterpreter, tmp_path, add_wham_noise=True), data)


def test_published_api(data, tmp_path):
    brain = make_brain(OnesInterpreter, tmp_path)
    wavs = torch.randn(2, 16000) * 0.1
    X_int, mask, phase, X = brain.interpret_computation_steps(wavs)
    assert X_int.shape == mask.shape == phase.shape == X.shape == (2, 87, 513)
    wav = brain.invert_stft_with_phase(X_int, phase)
    assert wav.shape[0] == 2 and torch.isfinite(wav).all()
    assert isinstance(brain, sb.Brain)  # the Brain is a real speechbrain Brain


def test_training_skips_the_masked_passes_when_the_loss_does_not_read_them(tmp_path):
    """``trains_on_masked_passes = False`` (L2I, PIQ): one classifier pass per training batch
    instead of two (the 2 B masked clips are not classified); evaluation still scores them."""
    from speechbrain.dataio.batch import PaddedBatch

    class NoMaskedPasses(OnesInterpreter):
        trains_on_masked_passes = False

    batch = PaddedBatch(
        [{"id": f"c{i}", "sig": torch.randn(16000), "class_string_encoded": torch.tensor([i])}
         for i in range(2)]
    )  # fmt: skip
    for cls, train_passes in ((OnesInterpreter, 2), (NoMaskedPasses, 1)):
        brain = make_brain(cls, tmp_path / cls.__name__)
        calls = []
        brain.hparams.model.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        brain.on_stage_start(sb.Stage.TRAIN, 1)
        out = brain.compute_forward(batch, sb.Stage.TRAIN)
        assert len(calls) == train_passes
        assert (out.logits_in is None) == (train_passes == 1)
        calls.clear()
        brain.on_stage_start(sb.Stage.TEST)
        out = brain.compute_forward(batch, sb.Stage.TEST)
        assert len(calls) == 2 and out.logits_in.shape == out.logits.shape
