"""Tests of audio_interpretability.viz: WAV and PNG outputs, validation, atomic writes."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from audio_interpretability import viz
from audio_interpretability.viz import plot_interpretation, save_interpretation, save_wav

SR = 16000


def _tone(n: int = 1600, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float32) / SR
    return amplitude * torch.sin(2 * torch.pi * 440.0 * t)


def _assert_png(path, min_width=100):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes the whole file: fails on truncated data
        assert image.size[0] >= min_width and image.size[1] > 0


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_save_wav_roundtrip(tmp_path):
    wav = _tone()
    path = save_wav(tmp_path / "sub" / "a.wav", wav, SR)
    data, sr = sf.read(path, dtype="float32")
    assert sr == SR and data.shape == (1600,)
    np.testing.assert_allclose(data, wav.numpy(), atol=1e-7)
    # (1, T) tensors and float64 arrays are accepted too.
    path2 = save_wav(tmp_path / "b.wav", wav.double().numpy()[None], 8000)
    info = sf.info(path2)
    assert info.frames == 1600 and info.samplerate == 8000 and info.channels == 1
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_save_wav_clips_with_warning(tmp_path, caplog):
    wav = _tone(amplitude=2.0)
    with caplog.at_level(logging.WARNING, logger="audio_interpretability.viz"):
        path = save_wav(tmp_path / "loud.wav", wav, SR)
    assert any("clipping" in r.message for r in caplog.records)
    data, _ = sf.read(path, dtype="float32")
    assert np.abs(data).max() == pytest.approx(1.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="audio_interpretability.viz"):
        save_wav(tmp_path / "quiet.wav", _tone(), SR)
    assert not caplog.records


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_save_wav_rejects_non_finite(tmp_path, bad):
    wav = _tone()
    wav[10] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        save_wav(tmp_path / "x.wav", wav, SR)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="mono"):
        save_wav(tmp_path / "x.wav", torch.zeros(2, 100), SR)


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = save_wav(tmp_path / "a.wav", _tone(), SR)
    before = path.read_bytes()

    def broken_write(file, data, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"RIFF-half")  # a partial file, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(viz.sf, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_wav(path, _tone(amplitude=0.1), SR)
    with pytest.raises(OSError, match="disk full"):
        save_wav(tmp_path / "new.wav", _tone(), SR)
    assert path.read_bytes() == before
    assert not (tmp_path / "new.wav").exists()
    assert _leftovers(tmp_path) == []


def test_plot_interpretation_writes_png_and_leaks_no_figures(tmp_path):
    g = torch.Generator().manual_seed(0)
    X = torch.rand(40, 65, generator=g)
    mask = (X > 0.5).float()
    panels = [("X", X), ("mask", mask.numpy()), ("M*X", mask * X)]
    before = plt.get_fignums()
    path = plot_interpretation(tmp_path / "fig.png", panels, "clip 1 (dog)")
    _assert_png(path, min_width=300)
    # With units (s, Hz): a different figure, also valid.
    path2 = plot_interpretation(tmp_path / "fig2.png", panels[:1], "", 16000, 186)
    _assert_png(path2)
    assert plt.get_fignums() == before
    assert _leftovers(tmp_path) == []


def test_plot_interpretation_rejects_bad_panels(tmp_path):
    bad = torch.rand(10, 12)
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        plot_interpretation(tmp_path / "f.png", [("ok", torch.rand(10, 12)), ("bad", bad)])
    with pytest.raises(ValueError, match="2-D"):
        plot_interpretation(tmp_path / "f.png", [("3d", torch.rand(1, 10, 12))])
    with pytest.raises(ValueError, match="empty"):
        plot_interpretation(tmp_path / "f.png", [])
    with pytest.raises(ValueError, match="both"):
        plot_interpretation(tmp_path / "f.png", [("x", torch.rand(3, 3))], sample_rate=16000)
    assert list(tmp_path.iterdir()) == []


def test_save_interpretation_writes_three_files(tmp_path):
    original = _tone(3200)
    interpretation = 0.5 * original
    X = torch.rand(18, 65)
    files = save_interpretation(
        tmp_path, "1-100-A-0", original, interpretation[None], SR, [("X", X)], "dog", 186
    )
    assert files.original == tmp_path / "1-100-A-0" / "original.wav"
    assert files.interpretation == tmp_path / "1-100-A-0" / "interpretation.wav"
    assert files.figure == tmp_path / "1-100-A-0" / "1-100-A-0.png"
    for wav_path, ref in ((files.original, original), (files.interpretation, interpretation)):
        data, sr = sf.read(wav_path, dtype="float32")
        assert sr == SR and data.shape == (3200,)
        np.testing.assert_allclose(data, ref.numpy(), atol=1e-7)
    _assert_png(files.figure)


def test_save_interpretation_writes_nothing_on_bad_input(tmp_path):
    original = _tone()
    broken = original.clone()
    broken[5] = float("nan")
    with pytest.raises(ValueError, match="interpretation"):
        save_interpretation(tmp_path, "clip", original, broken, SR, [("X", torch.rand(9, 9))])
    with pytest.raises(ValueError, match="panel"):
        save_interpretation(
            tmp_path, "clip", original, original, SR, [("X", torch.full((9, 9), float("inf")))]
        )
    with pytest.raises(ValueError, match="plain file name"):
        save_interpretation(
            tmp_path, "../escape", original, original, SR, [("X", torch.rand(9, 9))]
        )
    assert list(tmp_path.iterdir()) == []
