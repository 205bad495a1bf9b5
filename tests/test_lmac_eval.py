"""L-MAC evaluation: in-domain and out-of-domain settings, single-file inference, OOD mixing."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.data.esc50 import peak_normalize
from audio_interpretability.data.ood import (
    OverlapDataset,
    SpeechClips,
    generate_speech_like,
    overlap,
)
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.decoders import CNN14Decoder
from audio_interpretability.models.heads import LinearHead

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "hparams" / "lmac_cnn14.yaml"
SETTINGS = ("clean", "wham", "mixtures", "white_noise", "speech")


def load_eval():
    spec = importlib.util.spec_from_file_location(
        "lmac_eval", ROOT / "recipes" / "ESC50" / "interpret" / "eval.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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


def test_every_setting_writes_metrics(tmp_path, tiny_esc50, tiny_wham, checkpoints, device):
    speech = tmp_path / "speech"
    generate_speech_like(str(speech), n_files=2, duration=1.5, sample_rate=22050)
    out = tmp_path / "eval"
    results = load_eval().main(
        eval_args(
            out,
            checkpoints,
            device,
            data_folder=tiny_esc50,
            wham_folder=tiny_wham,
            overlap_type="all",
            speech_folder=speech,
        )
    )
    assert sorted(results) == sorted(SETTINGS)
    for setting in SETTINGS:
        with open(out / setting / "test_metrics.json", encoding="utf-8") as f:
            metrics = json.load(f)
        assert metrics == results[setting] and metrics["n_samples"] == 10.0
        assert {"AI", "AD", "AG", "FF", "fid_in", "SPS", "COMP", "loc_iou"} <= set(metrics)
        assert {"random_AI", "random_FF", "random_loc_iou"} <= set(metrics)
        assert len(list((out / setting / "interpretations").iterdir())) == 1
    with open(out / "eval_metrics.json", encoding="utf-8") as f:
        assert json.load(f) == results
    # Each setting feeds the interpreter other inputs.
    energies = {results[s]["loc_energy_in"] for s in SETTINGS}
    assert len(energies) == len(SETTINGS)


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


def test_eval_errors(tmp_path, tiny_esc50, checkpoints, device):
    main = load_eval().main
    with pytest.raises(ValueError, match="unknown overlap_type"):
        main(eval_args(tmp_path / "a", checkpoints, device, overlap_type="reverb"))
    with pytest.raises(FileNotFoundError, match="--speech_folder"):
        main(
            eval_args(
                tmp_path / "b", checkpoints, device, data_folder=tiny_esc50, overlap_type="speech"
            )
        )
    args = eval_args(tmp_path / "c", checkpoints, device)
    i = args.index("--pretrained_interpreter")
    with pytest.raises(ValueError, match="--pretrained_interpreter"):
        main(args[:i] + args[i + 2 :])


# --------------------------------------------------------------------------------------------
# Mixing formulas on hand-made signals
# --------------------------------------------------------------------------------------------
def test_overlap_formula_hand_computed():
    s = torch.tensor([0.0, 2.0, -1.0, 0.5])
    n = torch.tensor([4.0, 0.0, -4.0, 2.0])
    mix, gain, n_part = overlap(s, n, 0.8, 0.2, return_parts=True)
    raw = torch.tensor([0.2, 0.8, -0.6, 0.3])  # 0.8 * s / 2 + 0.2 * n / 4
    assert torch.allclose(mix, raw / 0.8)
    assert torch.allclose(mix, gain * s + n_part)
    # A silent interfering signal adds nothing; a silent clip leaves only the interference.
    assert torch.allclose(overlap(s, torch.zeros(4), 0.8, 0.2), s / 2)
    assert torch.allclose(overlap(torch.zeros(4), n, 1.0, 0.5), n / 4)
    with pytest.raises(ValueError, match="fit_length"):
        overlap(s, n[:3], 0.8, 0.2)


class Toy(torch.utils.data.Dataset):
    """Three clips with stems (event + background = sig), classes a, a, b."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.items = []
        for i, label in enumerate(("a", "a", "b")):
            event = torch.randn(200, generator=gen) * (i + 1)
            background = 0.1 * torch.randn(200, generator=gen)
            self.items.append(
                {
                    "id": str(i),
                    "sig": event + background,
                    "event_sig": event,
                    "background_sig": background,
                    "class_string": label,
                }
            )
        self.data_ids = [it["id"] for it in self.items]
        self.data = {it["id"]: {"class_string": it["class_string"]} for it in self.items}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])


def test_white_noise_and_mixtures_follow_the_formulas():
    toy = Toy()
    noisy = OverlapDataset(toy, "white_noise", 16000, seed=3)
    item = noisy[1]
    s = toy[1]["sig"]
    n = torch.randn(200, generator=torch.Generator().manual_seed(3 * 1_000_003 + 1))
    expected = peak_normalize(s / s.abs().max() + 0.5 * n / n.abs().max())
    assert torch.allclose(item["sig"], expected, atol=1e-6)
    assert torch.allclose(item["event_sig"] + item["background_sig"], item["sig"], atol=1e-5)
    assert torch.equal(noisy[1]["sig"], item["sig"])  # deterministic per index

    mixed = OverlapDataset(toy, "mixtures", 16000, seed=0)
    item = mixed[0]
    other = toy[2]["sig"]  # the only clip of another class
    s = toy[0]["sig"]
    expected = peak_normalize(0.8 * s / s.abs().max() + 0.2 * other / other.abs().max())
    assert torch.allclose(item["sig"], expected, atol=1e-6)
    assert torch.allclose(item["event_sig"] + item["background_sig"], item["sig"], atol=1e-5)


def test_speech_clips_any_format_and_errors(tmp_path):
    folder = tmp_path / "speech"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="no .wav or .flac"):
        SpeechClips(str(folder), 16000)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SpeechClips(str(tmp_path / "missing"), 16000)
    t = np.arange(8000) / 8000
    sf.write(folder / "stereo_8k.wav", np.stack((np.sin(2 * np.pi * 200 * t),) * 2, axis=1), 8000)
    clips = SpeechClips(str(folder), 16000)
    crop = clips.crop(12000, torch.Generator().manual_seed(0))  # 1 s file -> 16000 samples
    assert crop.shape == (12000,) and float(crop.abs().max()) > 0.5
    padded = clips.crop(20000, torch.Generator().manual_seed(0))
    assert padded.shape == (20000,) and float(padded[16000:].abs().max()) == 0.0
