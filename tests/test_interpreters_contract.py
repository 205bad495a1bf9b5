"""Every interpreter through the same tiny evaluation (as tests/test_models_contract.py does for
the backbones): ``eval.py <its YAML>`` on the same clips, in every setting (WHAM!, mixtures,
LJSpeech, white noise), then one file. Each must write the same ``test_metrics.json`` keys (beyond a few of its own), finite
numbers, listenable WAVs of the clip's length and a PNG per saved clip, through the one shared
evaluation path (``audio_interpretability.brains.evaluation``).

Adding an interpreter = one entry in ``INTERPRETERS`` below: its YAML, tiny sizes, and how to
write a (random) classifier checkpoint and, for trainable interpreters, a ``psi_model.ckpt``.
"""

import json
import math
from pathlib import Path

import pytest
import soundfile as sf
import torch
from helpers import load_script
from hyperpyyaml import load_hyperpyyaml

from audio_interpretability.checkpoints import export_classifier

ROOT = Path(__file__).resolve().parents[1]

#: name -> (YAML, tiny size overrides, trainable: writes psi_model.ckpt from the YAML's psi_model)
INTERPRETERS = {
    "amt_focalnet": (
        "amt_focalnet.yaml",
        {"img_size": 32, "embed_dim": 8, "depths": [1, 1, 1, 1]},
        False,
    ),
    "amt_vit": (
        "amt_vit.yaml",
        {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2},
        False,
    ),
    "lmac": ("lmac_cnn14.yaml", {"base_channels": 2, "emb_dim": 64, "decoder_width": 16}, True),
    "piq": ("piq_cnn14.yaml", {"base_channels": 2, "emb_dim": 64, "K": 16}, True),
    "l2i": (
        "l2i_cnn14.yaml",
        {"base_channels": 2, "emb_dim": 64, "K": 8, "theta_frames": 87},
        True,
    ),
    # the gradient baselines share one YAML (--int_method); Grad-CAM stands for them here, the
    # others run eval.py once in tests/test_gradient.py (each entry costs ~40 s)
    "gradcam": (
        "gradient_cnn14.yaml",
        {"base_channels": 2, "emb_dim": 64, "int_method": "gradcam"},
        False,
    ),
}

#: Keys every interpreter's test_metrics.json holds (faithfulness, localisation, baselines).
COMMON_KEYS = {
    "loss", "n_samples", "accuracy", "fid_in", "in_drop", "FF", "AI", "AD", "AG", "SPS", "COMP",
    "loc_precision", "loc_recall", "loc_iou", "loc_energy_in", "loc_time_corr", "loc_freq_corr",
    "mask_input_dependence",
}  # fmt: skip
#: Keys only some interpreters add (AMT: the fraction of bins kept; L2I: its own fidelity,
#: reconstruction and loss terms, relevant components).
OWN_KEYS = {"mask_fraction", "l2i_fid", "recons_err", "reg_loss", "fid_loss", "n_relevant"}


def load_eval():
    module = load_script("contract_eval", ROOT / "recipes" / "ESC50" / "interpret" / "eval.py")
    return module


def write_checkpoints(name: str, folder: Path) -> dict:
    """Random classifier (and interpreter) weights built from the YAML at tiny size."""
    yaml, sizes, trainable = INTERPRETERS[name]
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    values = {"data_folder": str(folder), "output_folder": str(folder), "out_n_neurons": 5}
    if "theta_frames" in sizes:  # L2I: a (random) NMF dictionary of K atoms first
        from audio_interpretability.nmf import NMFDecoderAudio

        values["nmf_decoder_path"] = str(folder / "nmf_decoder.ckpt")
        nmf = NMFDecoderAudio(n_comp=sizes["K"], n_freq=513)
        torch.save(nmf.state_dict(), values["nmf_decoder_path"])
    with open(ROOT / "hparams" / yaml, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, {**values, **sizes})
    paths = export_classifier(hp["embedding_model"], hp["classifier"], str(folder))
    paths.update(values)
    if trainable:
        paths["psi"] = str(folder / "psi_model.ckpt")
        torch.save(hp["psi_model"].state_dict(), paths["psi"])
    if "theta" in hp:  # L2I exports theta next to psi
        torch.save(hp["theta"].state_dict(), folder / "theta.ckpt")
    return paths


def run_eval(name: str, folder: Path, data: str, wham: str, **extra) -> dict:
    yaml, sizes, trainable = INTERPRETERS[name]
    paths = write_checkpoints(name, folder / "ckpt")
    options = {
        "data_folder": data,
        "output_folder": folder / "out",
        "embedding_model_path": paths["embedding_model"],
        "classifier_model_path": paths["classifier"],
        "out_n_neurons": 5,
        "batch_size": 4,
        "num_threads": 0,
        "n_saved_interpretations": 2,
        "wham_folder": wham,
        **sizes,
        **extra,
    }
    if trainable:
        options["pretrained_interpreter"] = paths["psi"]
    if "nmf_decoder_path" in paths:
        options["nmf_decoder_path"] = paths["nmf_decoder_path"]
    argv = [str(ROOT / "hparams" / yaml), "--noprogressbar", "--device", "cpu"]
    argv += [x for k, v in options.items() for x in (f"--{k}", str(v))]
    return load_eval().main(argv)


@pytest.fixture(scope="module")
def ljspeech(tmp_path_factory) -> str:
    """Speech-like files in the LJSpeech-1.1 layout (metadata.csv + wavs/, 22.05 kHz)."""
    from audio_interpretability.data.ood import generate_speech_like

    folder = tmp_path_factory.mktemp("lj") / "LJSpeech-1.1"
    generate_speech_like(str(folder), n_files=3, duration=1.5, ljspeech_layout=True)
    return str(folder)


@pytest.mark.parametrize("name", sorted(INTERPRETERS))
def test_same_evaluation_same_outputs(name, tmp_path, tiny_esc50, tiny_wham, ljspeech):
    results = run_eval(
        name, tmp_path, tiny_esc50, tiny_wham, overlap_type="all", ljspeech_path=ljspeech,
        add_wham_noise=True,
    )  # fmt: skip
    settings = {"wham": 10, "mixtures": 20, "LJSpeech": 20, "white_noise": 20}
    assert set(results) == set(settings)  # the valid fold; 2 contaminated versions a clip
    for setting, n_clips in settings.items():
        folder = tmp_path / "out" / setting
        metrics = json.loads((folder / "test_metrics.json").read_text())
        assert metrics == results[setting]
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        assert metrics["n_samples"] == n_clips
        own = (
            set(metrics) - COMMON_KEYS - {k for k in metrics if k.startswith(("random_", "swap_"))}
        )
        assert COMMON_KEYS <= set(metrics) and own <= OWN_KEYS, own
        assert {f"random_{k}" for k in ("FF", "AI", "loc_iou")} <= set(metrics)
        clips = sorted((folder / "interpretations").iterdir())
        assert len(clips) == 2
        for clip in clips:
            original, rate = sf.read(clip / "original.wav")
            interpretation, _ = sf.read(clip / "interpretation.wav")
            assert rate == 16000 and original.shape == interpretation.shape == (16000,)
            assert (clip / f"{clip.name}.png").stat().st_size > 0


@pytest.mark.parametrize("name", sorted(INTERPRETERS))
def test_single_file(name, tmp_path, tiny_esc50, tiny_wham):
    clip = sorted(Path(tiny_esc50, "audio").glob("*.wav"))[0]
    target = tmp_path / "single" / "interpretation.wav"
    result = run_eval(
        name, tmp_path, tiny_esc50, tiny_wham, single_sample=clip, single_sample_output=target
    )
    wav, rate = sf.read(target)
    assert rate == 16000 and wav.shape == (16000,) and result["wav_path"] == target
    assert target.with_suffix(".png").stat().st_size > 0
    assert 0 <= result["predicted_index"] < 5
