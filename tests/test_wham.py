"""WHAM! noise loading (real layout) and SNR mixing."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_interpretability.data.wham import WhamNoise, check_wham_args, mix_at_snr


def _snr_db(clean, noise):
    return 10 * torch.log10(clean.pow(2).sum(-1) / noise.pow(2).sum(-1))


@pytest.fixture
def ramp_wham(tmp_path):
    """wham_noise/tr with one stereo file whose samples identify their position."""
    folder = tmp_path / "wham_noise" / "tr"
    folder.mkdir(parents=True)
    ramp = np.arange(4000, dtype=np.float32) / 8000.0
    sf.write(folder / "long.wav", np.stack([ramp, ramp], axis=1), 16000, subtype="FLOAT")
    return str(tmp_path), ramp


def test_sample_shapes_and_layouts(tiny_wham):
    parent = os.path.dirname(tiny_wham)
    from_parent = WhamNoise(parent, sample_rate=16000, split="tr", seed=0)
    from_folder = WhamNoise(tiny_wham, sample_rate=16000, split="tr", seed=0)
    assert from_parent.files == from_folder.files and len(from_folder) == 4
    noise = from_folder.sample(3, 8000)
    assert noise.shape == (3, 8000) and noise.dtype == torch.float32
    assert torch.isfinite(noise).all() and (noise.abs().amax(-1) > 0).all()
    torch.testing.assert_close(from_parent.sample(3, 8000), noise)
    assert WhamNoise(tiny_wham, split="tt").sample(2, 100).shape == (2, 100)


def test_draws_differ_but_sequence_is_reproducible(tiny_wham):
    global_state = torch.get_rng_state()
    a = WhamNoise(tiny_wham, seed=3)
    first, second = a.sample(4, 4000), a.sample(4, 4000)
    assert not torch.allclose(first, second)
    b = WhamNoise(tiny_wham, seed=3)
    torch.testing.assert_close(b.sample(4, 4000), first)
    torch.testing.assert_close(b.sample(4, 4000), second)
    assert not torch.allclose(WhamNoise(tiny_wham, seed=4).sample(4, 4000), first)
    assert torch.equal(torch.get_rng_state(), global_state)  # global RNG untouched


def test_random_crops_are_exact_and_not_always_the_start(ramp_wham):
    root, ramp = ramp_wham
    for max_cache_mb in (512.0, 0.0):  # in-memory cache and read-from-disk paths
        noise = WhamNoise(root, sample_rate=16000, seed=0, max_cache_mb=max_cache_mb)
        assert noise.cache_in_memory == (max_cache_mb > 0)
        crops = noise.sample(20, 1000)
        offsets = torch.round(crops[:, 0] * 8000).long()
        assert len(set(offsets.tolist())) > 10
        for crop, offset in zip(crops, offsets.tolist()):
            torch.testing.assert_close(crop, torch.from_numpy(ramp[offset : offset + 1000]))


def test_short_file_is_zero_padded(ramp_wham):
    root, ramp = ramp_wham
    noise = WhamNoise(root, sample_rate=16000, seed=0).sample(2, 6000)
    for row in noise:
        torch.testing.assert_close(row[:4000], torch.from_numpy(ramp))
        assert torch.count_nonzero(row[4000:]) == 0


def test_resampled_on_load(tmp_path):
    folder = tmp_path / "tr"
    folder.mkdir()
    t = np.arange(16000) / 8000.0
    tone = 0.5 * np.sin(2 * np.pi * 500 * t)
    sf.write(folder / "a.wav", np.stack([tone, tone], axis=1), 8000, subtype="FLOAT")
    for max_cache_mb in (512.0, 0.0):
        crop = WhamNoise(str(tmp_path), sample_rate=16000, max_cache_mb=max_cache_mb).sample(
            1, 16000
        )[0]
        assert int(torch.fft.rfft(crop).abs().argmax()) == 500  # 1 s: 1 Hz per bin
        assert crop[100:-100].abs().max() == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("snr_db", [0.0, -5.0, 12.5])
def test_mix_at_snr(snr_db):
    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(4, 8000, generator=gen) * torch.tensor([[0.1], [1.0], [3.0], [0.01]])
    noise = torch.randn(4, 8000, generator=gen) * torch.tensor([[2.0], [0.1], [1.0], [1.0]])
    mixture, clean_part, noise_part = mix_at_snr(clean, noise, snr_db, return_parts=True)
    assert torch.allclose(_snr_db(clean_part, noise_part), torch.full((4,), snr_db), atol=0.1)
    torch.testing.assert_close(mixture, clean_part + noise_part)
    torch.testing.assert_close(mixture.abs().amax(-1), torch.ones(4))
    torch.testing.assert_close(
        clean_part / clean_part.abs().amax(-1, keepdim=True),
        clean / clean.abs().amax(-1, keepdim=True),
    )
    torch.testing.assert_close(mix_at_snr(clean, noise, snr_db), mixture)


def test_mix_at_snr_per_item_and_silence():
    gen = torch.Generator().manual_seed(1)
    clean, noise = torch.randn(3, 4000, generator=gen), torch.randn(3, 4000, generator=gen)
    snrs = torch.tensor([-3.0, 0.0, 6.0])
    _, c, n = mix_at_snr(clean, noise, snrs, return_parts=True)
    assert torch.allclose(_snr_db(c, n), snrs, atol=0.1)
    silent = torch.zeros(2, 4000)
    assert torch.count_nonzero(mix_at_snr(silent, noise[:2])) == 0
    out = mix_at_snr(clean[:2], silent)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, clean[:2] / clean[:2].abs().amax(-1, keepdim=True))
    with pytest.raises(ValueError, match="same shape"):
        mix_at_snr(clean, noise[:, :100])


def test_wham_argument_errors(tmp_path, tiny_wham):
    assert check_wham_args(False, None) is None
    with pytest.raises(ValueError, match="wham_folder is not set"):
        check_wham_args(True, None)
    with pytest.raises(ValueError, match="--wham_folder"):
        check_wham_args(True, "")
    assert check_wham_args(True, os.path.dirname(tiny_wham)) == tiny_wham
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_wham_args(True, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"wham_noise/\{tr,cv,tt\}"):
        WhamNoise(str(tmp_path))  # exists, but no split folders
    (tmp_path / "wham_noise" / "tr").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no \.wav file in .*wham_noise/tr"):
        WhamNoise(str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        WhamNoise(tiny_wham, split="train")
