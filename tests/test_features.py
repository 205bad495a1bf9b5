"""The STFT front-end: shapes, round trips through ISTFT, batch consistency."""

import pytest
import torch

from audio_interpretability.features import Frontend


def _signal(n=16000, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    tones = torch.sin(2 * torch.pi * 440 * t) + 0.5 * torch.sin(2 * torch.pi * 3100 * t)
    return 0.3 * tones + 0.1 * torch.randn(batch, n, generator=gen)  # (B, T)


def test_shapes():
    frontend = Frontend()
    spec = frontend(_signal())
    assert spec.stft.shape == (2, frontend.n_frames(16000), 513, 2)
    assert spec.X.shape == spec.phase.shape == spec.magnitude.shape == (2, 87, 513)
    assert frontend.log_mel(spec.X).shape == (2, 87, 80)
    torch.testing.assert_close(spec.X, torch.log1p(spec.magnitude))
    assert frontend.hop_samples == 186
    with pytest.raises(ValueError, match="batch, time"):
        frontend(torch.zeros(16000))


def test_stft_istft_round_trip():
    frontend = Frontend()
    x = _signal()
    y = frontend.compute_istft(frontend.compute_stft(x), sig_length=x.shape[1])
    edge = 1024
    torch.testing.assert_close(y[:, edge:-edge], x[:, edge:-edge], atol=1e-4, rtol=0)


@pytest.mark.parametrize("spec_mag_power", [0.5, 1.0])
def test_invert_log1p_magnitude_with_phase(spec_mag_power):
    frontend = Frontend(spec_mag_power=spec_mag_power)
    x = _signal()
    spec = frontend(x)
    y = frontend.invert(torch.expm1(spec.X), spec.phase, length=x.shape[1])
    assert y.shape == x.shape
    edge = 1024
    error = (y - x)[:, edge:-edge].pow(2).sum() / x[:, edge:-edge].pow(2).sum()
    assert error < 1e-6


def test_masked_inversion_removes_the_masked_band():
    frontend = Frontend()
    x = _signal(batch=1)
    spec = frontend(x)
    mask = torch.ones_like(spec.X)
    mask[..., 150:] = 0  # keep < ~2.3 kHz: the 440 Hz tone stays, the 3.1 kHz tone goes
    y = frontend.invert(torch.expm1(mask * spec.X), spec.phase, length=x.shape[1])
    spectrum = torch.fft.rfft(y[0]).abs()  # 1 Hz per bin for 1 s
    assert spectrum[3100] < 0.05 * torch.fft.rfft(x[0]).abs()[3100]
    assert spectrum[440] > 0.8 * torch.fft.rfft(x[0]).abs()[440]


def test_batch_equals_per_item():
    frontend = Frontend()
    x = _signal(batch=3)
    batched = frontend(x).X
    for i in range(3):
        torch.testing.assert_close(frontend(x[i : i + 1]).X[0], batched[i])
