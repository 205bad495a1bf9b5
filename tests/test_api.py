"""The Python API (``load_interpreter``, ``Interpreter``) and its command
(``python -m audio_interpretability.interpret``) on tiny models: L-MAC on a CNN14 (base
channels 2, as tests/test_single_sample.py) and AMT on a tiny FocalNet (as the contract test).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import load_script
from hyperpyyaml import load_hyperpyyaml

from audio_interpretability import Interpreter, load_interpreter
from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.interpret import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
LMAC_SIZES = {"base_channels": 2, "emb_dim": 64, "decoder_width": 16, "out_n_neurons": 5}
AMT_SIZES = {"img_size": 32, "embed_dim": 8, "depths": [1, 1, 1, 1], "out_n_neurons": 5}


def tone(seconds: float, rate: int = RATE, seed: int = 0, channels: int = 0) -> np.ndarray:
    """Chirp-like tone in light noise, (T,) or (T, channels) (channels at other gains)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.5 * np.sin(2 * np.pi * (300 + 400 * seed) * t * (1 + t)) + 0.05 * rng.standard_normal(
        t.shape
    )
    if channels:
        wav = np.stack([wav * (0.4 + 0.3 * c) for c in range(channels)], axis=1)  # (T, C)
    return wav.astype(np.float32)


def write_checkpoints(yaml: str, sizes: dict, folder: Path) -> dict:
    """Random classifier (and decoder) weights built from ``yaml`` at tiny size."""
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    values = {"data_folder": str(folder), "output_folder": str(folder), **sizes}
    with open(ROOT / "hparams" / yaml, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, values)
    paths = export_classifier(hp["embedding_model"], hp["classifier"], str(folder))
    if "psi_model" in hp:
        paths["psi"] = str(folder / "psi_model.ckpt")
        torch.save(hp["psi_model"].state_dict(), paths["psi"])
    return paths


@pytest.fixture(scope="module")
def lmac_ckpt(tmp_path_factory) -> dict:
    return write_checkpoints("lmac_cnn14.yaml", LMAC_SIZES, tmp_path_factory.mktemp("api") / "l")


@pytest.fixture(scope="module")
def lmac(lmac_ckpt, device) -> Interpreter:
    return load_interpreter(
        hparams_file="lmac_cnn14.yaml",
        embedding_model_path=lmac_ckpt["embedding_model"],
        classifier_model_path=lmac_ckpt["classifier"],
        pretrained_interpreter=lmac_ckpt["psi"],
        overrides=LMAC_SIZES,
        device=device,
    )


@pytest.fixture(scope="module")
def amt(tmp_path_factory, device) -> Interpreter:
    ckpt = write_checkpoints("amt_focalnet.yaml", AMT_SIZES, tmp_path_factory.mktemp("api") / "a")
    return load_interpreter(
        hparams_file=ROOT / "hparams" / "amt_focalnet.yaml",  # a path works as a name does
        embedding_model_path=ckpt["embedding_model"],
        classifier_model_path=ckpt["classifier"],
        overrides=AMT_SIZES,
        device=device,
    )


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory, tiny_esc50, lmac_ckpt, device) -> Path:
    """An output folder of train_lmac.py: one epoch of the tiny decoder on one fold."""
    module = load_script(
        "api_train_lmac", ROOT / "recipes" / "ESC50" / "interpret" / "train_lmac.py"
    )
    out = tmp_path_factory.mktemp("api") / "trained"
    options = {
        "data_folder": tiny_esc50,
        "output_folder": out,
        "embedding_model_path": lmac_ckpt["embedding_model"],
        "classifier_model_path": lmac_ckpt["classifier"],
        **{k: v for k, v in LMAC_SIZES.items()},
        "train_fold_nums": "[1]",
        "batch_size": 5,
        "lr": 0.01,
        "number_of_epochs": 1,
        "num_threads": 0,
        "save_interpretations": False,
        "random_baseline": False,
        "device": device,
    }
    argv = [str(ROOT / "hparams" / "lmac_cnn14.yaml"), "--noprogressbar"]
    module.main(argv + [x for k, v in options.items() for x in (f"--{k}", str(v))])
    return out


def test_import_is_light():
    """``import audio_interpretability`` does not load torch; the API loads on first use."""
    code = "import sys, audio_interpretability; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_load_from_trained_folder(trained_folder, lmac_ckpt, tiny_esc50, device):
    """The folder's hyperparams.yaml and exported decoder give the interpreter of the explicit
    paths; class names come from the run's label encoder."""
    psi = trained_folder / "save" / "psi_model.ckpt"
    from_folder = load_interpreter(trained_folder, device=device)
    state = torch.load(psi, weights_only=True)
    loaded = from_folder.brain.hparams.psi_model.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in state.items())
    initial = torch.load(lmac_ckpt["psi"], weights_only=True)
    assert any(not torch.equal(v, initial[k]) for k, v in state.items())  # trained: not psi
    explicit = load_interpreter(
        hparams_file="lmac_cnn14.yaml",
        embedding_model_path=lmac_ckpt["embedding_model"],
        classifier_model_path=lmac_ckpt["classifier"],
        pretrained_interpreter=psi,
        overrides=LMAC_SIZES,
        device=device,
    )
    clip = sorted(Path(tiny_esc50, "audio").glob("*.wav"))[0]
    a, b = from_folder.interpret_file(clip), explicit.interpret_file(clip)
    torch.testing.assert_close(a.mask, b.mask)
    assert a.predicted_index == b.predicted_index
    names = from_folder.class_names
    assert names is not None and len(names) == 5 and a.predicted_class == names[a.predicted_index]
    assert "lmac" in repr(from_folder)


@pytest.mark.parametrize("name", ["lmac", "amt"])
def test_batch_equals_per_clip(name, request):
    interpreter = request.getfixturevalue(name)
    wavs = torch.from_numpy(np.stack([tone(1.0, seed=s) for s in range(3)]))  # (3, T)
    batch = interpreter.interpret(wavs, RATE)
    assert isinstance(batch, list) and len(batch) == 3
    for k, result in enumerate(batch):
        alone = interpreter.interpret(wavs[k].numpy(), RATE)
        assert alone.predicted_index == result.predicted_index
        torch.testing.assert_close(alone.probabilities, result.probabilities, atol=1e-5, rtol=0)
        torch.testing.assert_close(alone.mask, result.mask, atol=1e-5, rtol=0)
        torch.testing.assert_close(alone.waveform, result.waveform, atol=1e-5, rtol=0)
        frames, bins = result.mask.shape
        assert bins == 513 and result.spectrogram.shape == (frames, bins)
        assert result.waveform.shape == (RATE,) and 0 < result.probability <= 1
        assert float(result.mask.min()) >= 0 and float(result.mask.max()) <= 1


def test_stereo_44k_array_equals_file(lmac, tmp_path):
    """A 44.1 kHz stereo array (C, T) and the same samples in a file: one result."""
    wav = tone(1.0, rate=44100, channels=2)  # (T, 2)
    path = tmp_path / "stereo.wav"
    sf.write(path, wav, 44100, subtype="FLOAT")
    from_file = lmac.interpret_file(path)
    from_array = lmac.interpret(wav.T, 44100, channels=True)
    assert from_file.predicted_index == from_array.predicted_index
    torch.testing.assert_close(from_file.mask, from_array.mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_file.waveform, from_array.waveform, atol=1e-5, rtol=0)
    assert from_file.waveform.shape == (RATE,) and from_file.source == str(path)


def test_save_writes_wav_png_json(amt, tmp_path):
    result = amt.interpret(tone(0.7, rate=22050), 22050)
    paths = result.save(tmp_path / "out", "clip")
    wav, rate = sf.read(paths["wav"])
    assert rate == RATE and wav.shape == (int(0.7 * RATE),)
    assert paths["png"].stat().st_size > 0
    summary = json.loads(paths["json"].read_text())
    assert summary["predicted_index"] == result.predicted_index
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "clip.json",
        "clip.png",
        "clip.wav",
    ]  # atomic writes: no temporary file left


def test_long_file_in_chunks_matches_streamed_output(lmac, tmp_path):
    """A file longer than a chunk: the API joins the chunks as eval.py --single_sample
    streams them (same waveform, same chunk records)."""
    path = tmp_path / "long.wav"
    sf.write(path, tone(2.3), RATE, subtype="FLOAT")
    result = lmac.interpret_file(path, chunk_seconds=1.0)
    streamed = lmac.interpret_file_to(path, tmp_path / "streamed", chunk_seconds=1.0)
    on_disk, _ = sf.read(streamed.wav_path, dtype="float32")
    assert result.waveform.shape == on_disk.shape == (int(2.3 * RATE),)
    np.testing.assert_allclose(result.waveform.numpy(), on_disk, atol=1e-6)
    assert len(result.chunks) == 3 and result.chunks == streamed.chunks
    assert result.probability == pytest.approx(streamed.probability, abs=1e-6)
    assert result.mask.shape == result.input_spectrogram.shape


def test_cli_two_good_files_one_bad(lmac_ckpt, tmp_path, capsys):
    good = []
    for k in range(2):
        good.append(tmp_path / f"good{k}.wav")
        sf.write(good[-1], tone(0.8, rate=44100, seed=k), 44100)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    argv = [str(good[0]), str(bad), str(good[1]), "--hparams", "lmac_cnn14.yaml"]
    argv += ["--embedding_model_path", lmac_ckpt["embedding_model"]]
    argv += ["--classifier_model_path", lmac_ckpt["classifier"]]
    argv += ["--pretrained_interpreter", lmac_ckpt["psi"], "--no_progress"]
    argv += ["--out", str(tmp_path / "out"), "--device", "cpu"]
    argv += [f"--override={k}={v}" for k, v in LMAC_SIZES.items()]
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2
    for path, line in zip(good, lines):
        assert line.startswith(f"{path}: ") and "p = " in line
        assert str(tmp_path / "out" / f"{path.stem}_interpretation.wav") in line
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(bad) in errors[0] and "cannot be decoded" in errors[0]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == [
        "good0_interpretation.wav",
        "good1_interpretation.wav",
    ]


def test_load_errors(tmp_path, lmac_ckpt):
    with pytest.raises(ValueError, match="either a trained output folder"):
        load_interpreter()
    with pytest.raises(FileNotFoundError, match="hyperparams.yaml does not exist"):
        load_interpreter(tmp_path)
    with pytest.raises(FileNotFoundError, match="lmac_cnn14.yaml"):
        load_interpreter(hparams_file="no_such.yaml")
    with pytest.raises(ValueError, match="overrides base_chanels are not keys"):  # a typo
        load_interpreter(hparams_file="lmac_cnn14.yaml", overrides={"base_chanels": 2})
    with pytest.raises(ValueError, match="pretrained_interpreter"):  # L-MAC needs its decoder
        load_interpreter(
            hparams_file="lmac_cnn14.yaml",
            embedding_model_path=lmac_ckpt["embedding_model"],
            classifier_model_path=lmac_ckpt["classifier"],
            overrides=LMAC_SIZES,
        )


def test_docs_example_runs(capsys):
    """The runnable example of docs/API.md runs as written."""
    text = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    section = text.split("## Example (runnable as is)", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/API.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "['tones.json', 'tones.png', 'tones.wav']"
    assert printed[-2].endswith("(81, 513)")


def test_trained_psi_prefers_the_fine_tuned_decoder(tmp_path):
    """A fine-tuning run's folder: save/finetuning/psi_model.ckpt; a pre-training run's:
    save/psi_model.ckpt; none exported (eval.py): None (the run's pretrained_interpreter)."""
    from audio_interpretability.api import _trained_psi

    assert _trained_psi(tmp_path, {"finetuning": True}) is None
    (tmp_path / "save" / "finetuning").mkdir(parents=True)
    (tmp_path / "save" / "psi_model.ckpt").write_bytes(b"")
    assert _trained_psi(tmp_path, {"finetuning": True}) == str(tmp_path / "save/psi_model.ckpt")
    (tmp_path / "save" / "finetuning" / "psi_model.ckpt").write_bytes(b"")
    fine = str(tmp_path / "save" / "finetuning" / "psi_model.ckpt")
    assert _trained_psi(tmp_path, {"finetuning": True}) == fine
    assert _trained_psi(tmp_path, {"finetuning": False}) == str(tmp_path / "save/psi_model.ckpt")
