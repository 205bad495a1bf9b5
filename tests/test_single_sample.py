"""``eval.py --single_sample`` on long files: interpreted chunk by chunk (memory of one chunk),
the output WAV streamed and complete, one JSON with each chunk's prediction, a bad file named
before any model work. (Peak memory against file length: benchmarks/bench_single_sample.py.)
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import load_script

from audio_interpretability.brains.evaluation import chunk_samples
from audio_interpretability.data.audio import AudioError
from audio_interpretability.features import Frontend

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000


def load_eval():
    module = load_script("single_sample_eval", ROOT / "recipes" / "ESC50" / "interpret" / "eval.py")
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    from audio_interpretability.checkpoints import export_classifier
    from audio_interpretability.models.cnn14 import Cnn14
    from audio_interpretability.models.decoders import CNN14Decoder
    from audio_interpretability.models.heads import LinearHead

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpts")
    paths = export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, 5), folder)
    paths["psi"] = str(folder / "psi_model.ckpt")
    torch.save(CNN14Decoder(in_dim=64, width=16).state_dict(), paths["psi"])
    return paths


def run(out: Path, ckpt: dict, wav: Path, device: str, chunk_s) -> dict:
    options = {
        "data_folder": out / "no_data",
        "output_folder": out,
        "embedding_model_path": ckpt["embedding_model"],
        "classifier_model_path": ckpt["classifier"],
        "pretrained_interpreter": ckpt["psi"],
        "base_channels": 2,
        "emb_dim": 64,
        "decoder_width": 16,
        "out_n_neurons": 5,
        "num_threads": 0,
        "device": device,
        "single_sample": wav,
        "single_sample_output": out / "int.wav",
        "single_sample_chunk_s": "null" if chunk_s is None else chunk_s,
    }
    argv = [str(ROOT / "hparams" / "lmac_cnn14.yaml"), "--noprogressbar"]
    return load_eval().main(argv + [x for k, v in options.items() for x in (f"--{k}", str(v))])


def tones(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A tone whose pitch changes every 0.5 s, in light noise; peak 0.8 at the first sample."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 300.0 * (1 + (t // 0.5) % 4)
    wav = 0.5 * np.sin(2 * np.pi * pitch * t) + 0.05 * rng.standard_normal(t.shape)
    wav[0] = 0.8
    return wav.astype(np.float32)


def test_chunk_length_keeps_lmac_frames():
    frontend = Frontend(sample_rate=RATE)
    for seconds in (0.3, 1.0, 5.0, 7.7):
        n = chunk_samples(frontend, seconds)
        assert n % (8 * frontend.hop_samples) == 0 and frontend.n_frames(n) % 8 == 1
        assert abs(n / RATE - seconds) <= 4 * frontend.hop_samples / RATE + 1e-9
    with pytest.raises(ValueError, match="single_sample_chunk_s must be a positive"):
        chunk_samples(frontend, 0)


def test_long_file_in_chunks(tmp_path, checkpoints, device):
    """A 4.3 s file in ~1.1 s chunks: the WAV has every sample, the JSON one entry per chunk
    tiling the file, and the first chunk's interpretation is that chunk's own."""
    chunk = chunk_samples(Frontend(sample_rate=RATE), 1.0)
    wav = tones(4.3)
    long_file = tmp_path / "long.wav"
    sf.write(long_file, wav, RATE, subtype="FLOAT")
    result = run(tmp_path / "long", checkpoints, long_file, device, 1.0)

    out, rate = sf.read(result["wav_path"])
    assert rate == RATE and out.shape == wav.shape and np.isfinite(out).all()
    chunks = json.loads(Path(result["json_path"]).read_text())["chunks"]
    assert chunks == result["chunks"] and len(chunks) == math.ceil(wav.size / chunk)
    assert chunks[0]["start_s"] == 0 and chunks[-1]["end_s"] == pytest.approx(wav.size / RATE)
    assert all(a["end_s"] == b["start_s"] for a, b in zip(chunks, chunks[1:]))
    probs = [c["probability"] for c in chunks]
    assert all(0 < p <= 1 for p in probs) and 0 < result["probability"] <= 1
    assert Path(result["png_path"]).stat().st_size > 0

    # the first chunk alone (same peak, 0.8, so the same normalisation), at once
    first = tmp_path / "first.wav"
    sf.write(first, wav[:chunk], RATE, subtype="FLOAT")
    alone = run(tmp_path / "first", checkpoints, first, device, None)
    alone_out, _ = sf.read(alone["wav_path"])
    assert alone_out.shape == (chunk,)
    np.testing.assert_allclose(out[:chunk], alone_out, atol=1e-5)
    assert alone["chunks"][0]["probability"] == pytest.approx(chunks[0]["probability"], abs=1e-5)
    # the masks differ between chunks of different content (not one mask tiled)
    assert not np.allclose(out[:chunk], out[chunk : 2 * chunk], atol=1e-3)


def test_short_file_is_one_pass(tmp_path, checkpoints, device):
    """A file no longer than a chunk: the same result with and without chunking."""
    clip = tmp_path / "short.wav"
    sf.write(clip, tones(0.9, rate=22050), 22050)
    chunked = run(tmp_path / "a", checkpoints, clip, device, 5.0)
    whole = run(tmp_path / "b", checkpoints, clip, device, None)
    a, _ = sf.read(chunked["wav_path"])
    b, _ = sf.read(whole["wav_path"])
    assert a.shape == (int(0.9 * RATE),) and np.array_equal(a, b)
    assert len(chunked["chunks"]) == 1 and chunked["probability"] == whole["probability"]


def test_bad_long_file_stops_before_work(tmp_path, checkpoints, device, monkeypatch):
    """NaN samples in the last chunk of a long file: named at once, nothing interpreted or
    written (the check is a streaming pass before the first chunk)."""
    from audio_interpretability.brains.interpreter import InterpreterBrain

    wav = tones(4.3)
    wav[-100:-98] = np.nan
    bad = tmp_path / "bad.wav"
    sf.write(bad, wav, RATE, subtype="FLOAT")

    def no_work(*args, **kwargs):
        raise AssertionError("a chunk was interpreted before the bad samples were found")

    monkeypatch.setattr(InterpreterBrain, "interpret", no_work)
    with pytest.raises(AudioError, match=r"holds 2 NaN and 0 Inf sample\(s\) \(first at 4\.29"):
        run(tmp_path / "run", checkpoints, bad, device, 1.0)
    assert not list((tmp_path / "run").glob("int*"))
