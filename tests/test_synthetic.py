"""Synthetic ESC-50 generator, its CLI, and ground-truth masks."""

import csv
import os
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import load_script

from audio_interpretability.data.synthetic import (
    MAX_CLASSES,
    class_params,
    generate_synthetic_esc50,
    ground_truth_mask,
    synthesize_clip,
)
from audio_interpretability.features import Frontend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_csv(root):
    with open(os.path.join(root, "meta", "esc50.csv"), newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_layout_and_schema(tiny_esc50):
    columns, rows = _read_csv(tiny_esc50)
    assert columns == ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    assert len(rows) == 5 * 2 * 5
    assert [r["filename"] for r in rows] == sorted(r["filename"] for r in rows)
    pattern = re.compile(r"^([1-5])-(\d+)-([A-Z])-(\d+)\.wav$")
    for row in rows:
        fold, src_file, take, target = pattern.match(row["filename"]).groups()
        assert (fold, src_file, take, target) == (
            row["fold"],
            row["src_file"],
            row["take"],
            row["target"],
        )
        assert row["esc10"] in ("True", "False")
        assert row["category"] == class_params(int(target))["category"]
        stem = row["filename"][:-4]
        audio, sr = sf.read(os.path.join(tiny_esc50, "audio", row["filename"]))
        assert sr == 16000 and audio.shape == (16000,)
        event, _ = sf.read(os.path.join(tiny_esc50, "stems", f"{stem}_event.wav"))
        background, _ = sf.read(os.path.join(tiny_esc50, "stems", f"{stem}_background.wav"))
        np.testing.assert_allclose(event + background, audio, atol=1e-4)
        assert np.abs(event).max() > 5 * np.sqrt(np.mean(background**2))
    for fold in "12345":
        assert sum(r["fold"] == fold for r in rows) == 10
    assert {r["take"] for r in rows} == {"A", "B"}


def test_generator_is_deterministic(tmp_path):
    kwargs = dict(n_classes=2, clips_per_class_per_fold=1, duration=0.5, sample_rate=16000)
    generate_synthetic_esc50(str(tmp_path / "a"), seed=7, **kwargs)
    generate_synthetic_esc50(str(tmp_path / "b"), seed=7, **kwargs)
    generate_synthetic_esc50(str(tmp_path / "c"), seed=8, **kwargs)
    names = sorted(os.listdir(tmp_path / "a" / "audio"))
    assert len(names) == 10
    for name in names:
        a = (tmp_path / "a" / "audio" / name).read_bytes()
        assert a == (tmp_path / "b" / "audio" / name).read_bytes()
        assert a != (tmp_path / "c" / "audio" / name).read_bytes()
    e1, b1 = synthesize_clip(4, 0.5, 16000, np.random.default_rng([1, 2]))
    e2, b2 = synthesize_clip(4, 0.5, 16000, np.random.default_rng([1, 2]))
    assert np.array_equal(e1, e2) and np.array_equal(b1, b2)


def test_class_table():
    params = [class_params(k) for k in range(MAX_CLASSES)]
    assert len({p["category"] for p in params}) == MAX_CLASSES
    assert len({(p["type"], p["band"]) for p in params}) == MAX_CLASSES
    assert max(p["freq"] for p in params) * 1.2 < 8000  # below Nyquist at 16 kHz
    assert {p["variant"] for p in params} == {"", "up", "down", "am", "fm"}
    with pytest.raises(ValueError, match="0..49"):
        class_params(MAX_CLASSES)
    with pytest.raises(ValueError, match="n_classes"):
        generate_synthetic_esc50("unused", n_classes=51)


def test_classes_are_distinguishable():
    """Nearest-centroid on background-subtracted log-mel statistics separates 15 classes."""
    frontend = Frontend(sample_rate=16000)
    n_classes, n_clips = 15, 5
    wavs, labels = [], []
    for target in range(n_classes):
        for j in range(n_clips):
            event, background = synthesize_clip(
                target, 1.0, 16000, np.random.default_rng([11, target, j])
            )
            wavs.append(event + background)
            labels.append(target)
    log_mel = frontend.log_mel(frontend(torch.tensor(np.array(wavs), dtype=torch.float32)).X)
    log_mel = log_mel - log_mel.median(dim=1, keepdim=True).values  # remove the background
    log_mel = log_mel / log_mel.amax(dim=(1, 2), keepdim=True)
    features = torch.cat([log_mel.mean(1), log_mel.amax(1)], dim=-1)  # (N, 2 * n_mels)
    labels = torch.tensor(labels)
    train = torch.arange(len(labels)) % n_clips < 2
    centroids = torch.stack([features[train & (labels == c)].mean(0) for c in range(n_classes)])
    predicted = torch.cdist(features[~train], centroids).argmin(1)
    accuracy = (predicted == labels[~train]).float().mean().item()
    assert accuracy >= 0.95, accuracy


def test_ground_truth_mask_constructed_case():
    sr = 16000
    frontend = Frontend(sample_rate=sr)
    t = torch.arange(sr) / sr
    gate = ((t >= 0.25) & (t < 0.5)).float()
    event = 0.5 * torch.sin(2 * torch.pi * 2000 * t) * gate  # 2 kHz = bin 128 of 513
    background = 0.05 * torch.randn(sr, generator=torch.Generator().manual_seed(0))
    mask = ground_truth_mask(event, background, frontend)
    assert mask.shape == (1, frontend.n_frames(sr), 513)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    hop = frontend.hop_samples
    inside = slice(int(0.27 * sr) // hop, int(0.48 * sr) // hop)
    assert mask[0, inside, 126:131].min() == 1  # event band, event time
    assert mask[0, : int(0.2 * sr) // hop].sum() == 0  # before the event
    assert mask[0, int(0.55 * sr) // hop :].sum() == 0  # after the event
    assert mask[0, inside, 300:].mean() < 0.01  # far from the band: window leakage only
    stricter = ground_truth_mask(event, background, frontend, threshold_db=20.0)
    assert 0 < stricter.sum() < mask.sum()


def test_ground_truth_mask_floor_batch_and_config():
    sr = 16000
    t = torch.arange(sr) / sr
    loud, quiet = torch.sin(2 * torch.pi * 1000 * t), 1e-3 * torch.sin(2 * torch.pi * 3000 * t)
    event = torch.stack([loud + quiet, 0.3 * loud])  # (2, T)
    background = torch.zeros_like(event)
    frontend = Frontend(sample_rate=sr)
    with_floor = ground_truth_mask(event, background, frontend, floor_db=-40.0)
    without = ground_truth_mask(event, background, frontend, floor_db=None)
    assert with_floor[0, 40, 192] == 0 and without[0, 40, 192] == 1  # 3 kHz tone: -54 dB
    assert with_floor.sum() < without.sum()
    assert with_floor[0, 40, 64] == 1
    single = ground_truth_mask(event[1], background[1], frontend, floor_db=-40.0)
    torch.testing.assert_close(single[0], with_floor[1])  # batched == per item
    small = Frontend(sample_rate=sr, n_fft=512, win_length=32, hop_length=16)
    assert ground_truth_mask(event, background, small).shape == (2, small.n_frames(sr), 257)
    with pytest.raises(ValueError, match="same shape"):
        ground_truth_mask(event, background[:, :100], frontend)


def test_ground_truth_of_generated_clip_is_at_class_frequency():
    frontend = Frontend(sample_rate=16000)
    params = class_params(5)  # harmonic tone
    event, background = synthesize_clip(5, 1.0, 16000, np.random.default_rng(0))
    mask = ground_truth_mask(
        torch.tensor(event, dtype=torch.float32),
        torch.tensor(background, dtype=torch.float32),
        frontend,
    )
    assert 0 < mask.mean() < 0.3
    f0_bin = round(params["freq"] / (16000 / 1024))
    per_bin = mask[0].sum(0)  # (bins,): active frames per frequency bin
    assert per_bin[f0_bin - 2 : f0_bin + 3].max() >= 0.9 * per_bin.max()
    # a harmonic tone has 4 harmonics: almost nothing above the 5th
    assert per_bin[5 * f0_bin :].sum() < 0.05 * per_bin.sum()


def test_cli_writes_layout(tmp_path):
    module = load_script(
        "prepare_synthetic", os.path.join(REPO, "recipes", "ESC50", "prepare_synthetic.py")
    )
    out, wham = tmp_path / "synth", tmp_path / "wham"
    module.main(
        f"--output_folder {out} --n_classes 3 --clips_per_class_per_fold 1 --duration 0.5 "
        f"--sample_rate 22050 --seed 1 --wham_folder {wham}".split()
    )
    _, rows = _read_csv(str(out))
    assert len(rows) == 15 and len(os.listdir(out / "audio")) == 15
    assert len(os.listdir(out / "stems")) == 30
    assert sf.info(str(out / "audio" / rows[0]["filename"])).samplerate == 22050
    lengths = set()
    for split in ("tr", "cv", "tt"):
        files = sorted(os.listdir(wham / split))
        assert len(files) >= 2
        for name in files:
            info = sf.info(str(wham / split / name))
            assert info.channels == 2 and info.samplerate == 16000
            lengths.add(info.frames)
    assert len(lengths) > 1


def test_ground_truth_counts_only_audible_event_bins_not_side_lobes():
    """A 150 Hz harmonic (class 0: partials up to 600 Hz) over quiet pink noise: with the
    default margin and floor no bin far above the partials counts as event; a -60 dB floor
    without margin (the former default) let the window's side lobes through up there."""
    sr = 16000
    event, background = synthesize_clip(0, 2.0, sr, np.random.default_rng(0))
    event, background = torch.from_numpy(event).float(), torch.from_numpy(background).float()
    frontend = Frontend(sample_rate=sr)
    truth = ground_truth_mask(event, background, frontend)
    loose = ground_truth_mask(event, background, frontend, threshold_db=0.0, floor_db=-60.0)
    high = 1500 * 1024 // sr  # bins above 1.5 kHz: > 2 octaves over the top partial
    assert truth[0, :, high:].sum() == 0
    assert loose[0, :, high:].sum() > 20  # side lobes counted before
    f0_bin = round(class_params(0)["freq"] * 1024 / sr)
    assert truth[0, :, f0_bin - 1 : f0_bin + 2].sum() > 20  # the fundamental itself is kept
