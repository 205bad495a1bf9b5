"""L-MAC evaluation (eval.py): both protocols end to end, their folds and multipliers, errors,
single-file inference. The contamination formulas are tested in tests/test_ood.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import load_script

from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.data.ood import (
    ContaminatedDataset,
    LJSpeechClips,
    OverlapDataset,
    generate_speech_like,
)
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.decoders import CNN14Decoder
from audio_interpretability.models.heads import LinearHead

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "hparams" / "lmac_cnn14.yaml"
OURS_SETTINGS = ("clean", "wham", "mixtures", "LJSpeech", "white_noise")


def load_eval():
    module = load_script("lmac_eval", ROOT / "recipes" / "ESC50" / "interpret" / "eval.py")
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Tiny classifier (random weights) and a tiny decoder, saved as the recipes save them."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpts")
    paths = export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, 5), folder)
    paths["psi"] = str(folder / "psi_model.ckpt")
    torch.save(CNN14Decoder(in_dim=64, width=16).state_dict(), paths["psi"])
    return paths


def eval_args(out, checkpoints, device, **overrides) -> list[str]:
    options = {
        "data_folder": overrides.pop("data_folder", str(out / "no_data")),
        "output_folder": out,
        "embedding_model_path": checkpoints["embedding_model"],
        "classifier_model_path": checkpoints["classifier"],
        "pretrained_interpreter": checkpoints["psi"],
        "base_channels": 2,
        "emb_dim": 64,
        "decoder_width": 16,
        "out_n_neurons": 5,
        "batch_size": 4,  # 10 test clips: batches of 4, 4, 2
        "num_threads": 0,
        "n_saved_interpretations": 1,
        "device": device,
        **overrides,
    }
    return [str(YAML), "--noprogressbar"] + [
        x for k, v in options.items() for x in (f"--{k}", str(v))
    ]


@pytest.fixture(scope="module")
def ljspeech(tmp_path_factory) -> str:
    """Speech-like files in the LJSpeech-1.1 layout (metadata.csv + wavs/, 22.05 kHz)."""
    folder = tmp_path_factory.mktemp("lj") / "LJSpeech-1.1"
    generate_speech_like(str(folder), n_files=3, duration=1.5, ljspeech_layout=True)
    return str(folder)


def read_metrics(out, setting) -> dict:
    with open(out / setting / "test_metrics.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize(
    "setting, options",
    [
        ("mixtures", {"overlap_type": "mixtures"}),
        ("LJSpeech", {"overlap_type": "LJSpeech"}),
        ("white_noise", {"overlap_type": "white_noise"}),
        ("wham", {"add_wham_noise": True}),
    ],
)
def test_published_protocol_end_to_end(
    tmp_path, tiny_esc50, tiny_wham, ljspeech, checkpoints, device, setting, options
):
    out = tmp_path / "eval"
    results = load_eval().main(
        eval_args(
            out,
            checkpoints,
            device,
            data_folder=tiny_esc50,
            wham_folder=tiny_wham,
            ljspeech_path=Path(ljspeech).parent,  # the published ljspeech_path: the parent
            **options,
        )
    )
    assert list(results) == [setting]  # one setting per call, as published
    metrics = read_metrics(out, setting)
    # The validation fold (10 clips), in 2 contaminated versions per clip out of domain.
    assert metrics == results[setting]
    assert metrics["n_samples"] == (10.0 if setting == "wham" else 20.0)
    assert {"AI", "AD", "AG", "FF", "fid_in", "SPS", "COMP", "loc_iou"} <= set(metrics)
    (saved,) = (out / setting / "interpretations").iterdir()
    assert saved.name.startswith("4-")  # fold 4: the validation fold
    assert ("_ov0_" in saved.name) == (setting != "wham")


def test_ours_protocol_every_setting(
    tmp_path, tiny_esc50, tiny_wham, ljspeech, checkpoints, device
):
    out = tmp_path / "eval"
    results = load_eval().main(
        eval_args(
            out,
            checkpoints,
            device,
            data_folder=tiny_esc50,
            wham_folder=tiny_wham,
            eval_protocol="ours",
            overlap_type="all",
            ljspeech_path=ljspeech,
        )
    )
    assert sorted(results) == sorted(OURS_SETTINGS)
    for setting in OURS_SETTINGS:
        metrics = read_metrics(out, setting)
        assert metrics == results[setting] and metrics["n_samples"] == 10.0
        assert {"random_AI", "random_FF", "random_loc_iou"} <= set(metrics)
        (saved,) = (out / setting / "interpretations").iterdir()
        assert saved.name.startswith("5-") and "_ov" not in saved.name  # the test fold
    with open(out / "eval_metrics.json", encoding="utf-8") as f:
        assert json.load(f) == results
    # Each setting feeds the interpreter other inputs.
    energies = {results[s]["loc_energy_in"] for s in OURS_SETTINGS}
    assert len(energies) == len(OURS_SETTINGS)


class Clips(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"id": f"c{i}", "sig": torch.ones(50) * (i + 1)}


def test_evaluation_runs_folds_and_multiplier(ljspeech):
    runs_of = load_eval().evaluation_runs
    datasets = {"valid": Clips(3), "test": Clips(4)}
    hparams = {
        "eval_protocol": "published",
        "overlap_type": "all",
        "overlap_multiplier": 2,
        "add_wham_noise": True,
        "wham_folder": "W",
        "seed": 0,
        "contamination_draws": "published",
    }
    speech = LJSpeechClips(ljspeech)
    runs = runs_of(hparams, datasets, speech)
    assert [(name, noisy) for name, _, noisy in runs] == [
        ("wham", True),
        ("mixtures", False),
        ("LJSpeech", False),
        ("white_noise", False),
    ]
    assert runs[0][1] is datasets["valid"]
    for _, dataset, _ in runs[1:]:
        assert isinstance(dataset, ContaminatedDataset) and dataset.dataset is datasets["valid"]
        assert dataset.multiplier == 2 and len(dataset) == 6
    assert runs[1][1].contamination is datasets["test"] and runs[2][1].contamination is speech
    # Nothing asked: the validation fold as it is.
    quiet = dict(hparams, overlap_type="none", add_wham_noise=False)
    assert runs_of(quiet, datasets, None) == [("clean", datasets["valid"], False)]

    ours = runs_of(dict(hparams, eval_protocol="ours", overlap_type="speech"), datasets, speech)
    assert [(name, noisy) for name, _, noisy in ours] == [
        ("clean", False),
        ("wham", True),
        ("LJSpeech", False),
    ]
    assert ours[0][1] is datasets["test"] and ours[1][1] is datasets["test"]
    assert isinstance(ours[2][1], OverlapDataset) and ours[2][1].dataset is datasets["test"]
    assert len(ours[2][1]) == 4  # one version per clip


def test_single_sample_stereo_44k(tmp_path, checkpoints, device, capsys):
    t = np.arange(int(1.5 * 44100)) / 44100
    stereo = np.stack((np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 1000 * t)), axis=1)
    wav_in = tmp_path / "clip.wav"
    sf.write(wav_in, 0.5 * stereo, 44100)
    target = tmp_path / "out" / "clip_interpretation.wav"
    result = load_eval().main(
        eval_args(
            tmp_path / "run", checkpoints, device, single_sample=wav_in, single_sample_output=target
        )
    )
    data, rate = sf.read(target)
    assert rate == 16000 and data.ndim == 1 and data.shape[0] == 24000
    assert np.isfinite(data).all() and np.abs(data).max() > 0
    assert target.with_suffix(".png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert f"predicted class {result['predicted_class']}" in printed
    assert 0 <= result["predicted_index"] < 5 and 0 < result["probability"] <= 1


def test_eval_errors(tmp_path, tiny_esc50, checkpoints, device, monkeypatch):
    module = load_eval()

    def no_work(*args, **kwargs):
        raise AssertionError("the data or the brain were built before the error")

    monkeypatch.setattr(module, "prepare_datasets", no_work)
    monkeypatch.setattr(module, "build_interpreter", no_work)
    main = module.main
    with pytest.raises(ValueError, match="unknown overlap_type"):
        main(eval_args(tmp_path / "a", checkpoints, device, overlap_type="reverb"))
    with pytest.raises(ValueError, match="unknown eval_protocol"):
        main(eval_args(tmp_path / "a", checkpoints, device, eval_protocol="paper"))
    # LJSpeech missing or empty: an error naming --ljspeech_path, before any work.
    empty = tmp_path / "empty_lj"
    (empty / "wavs").mkdir(parents=True)
    for protocol, path in (("published", "null"), ("published", tmp_path / "no"), ("ours", empty)):
        with pytest.raises(FileNotFoundError, match="--ljspeech_path"):
            main(
                eval_args(
                    tmp_path / "b",
                    checkpoints,
                    device,
                    data_folder=tiny_esc50,
                    overlap_type="speech",
                    eval_protocol=protocol,
                    ljspeech_path=path,
                )
            )
    args = eval_args(tmp_path / "c", checkpoints, device)
    i = args.index("--pretrained_interpreter")
    with pytest.raises(ValueError, match="--pretrained_interpreter"):
        main(args[:i] + args[i + 2 :])
