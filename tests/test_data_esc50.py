"""ESC-50 preparation and data pipelines on small folders in the real ESC-50 layout."""

import csv
import json
import logging
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_interpretability.data.esc50 import (
    AudioCache,
    check_folds,
    dataio_prep,
    load_audio,
    peak_normalize,
    prepare_esc50,
)


def _outputs(folder):
    return [os.path.join(folder, f"{split}.json") for split in ("train", "valid", "test")]


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture
def esc_copy(tiny_esc50, tmp_path):
    """A private, modifiable copy of the tiny synthetic ESC-50 folder (audio + meta only)."""
    root = tmp_path / "esc50"
    shutil.copytree(os.path.join(tiny_esc50, "audio"), root / "audio")
    shutil.copytree(os.path.join(tiny_esc50, "meta"), root / "meta")
    return str(root)


def _write_manifest(path, entries):
    with open(path, "w") as f:
        json.dump(entries, f)


def test_manifest_counts_per_fold(tiny_esc50, tmp_path):
    out = _outputs(tmp_path)
    prepare_esc50(tiny_esc50, *out)
    train, valid, test = (_load(p) for p in out)
    # 5 classes x 2 clips per fold
    assert (len(train), len(valid), len(test)) == (30, 10, 10)
    assert {e["fold"] for e in train.values()} == {1, 2, 3}
    assert {e["fold"] for e in valid.values()} == {4}
    assert {e["fold"] for e in test.values()} == {5}
    clip_id, entry = sorted(test.items())[0]
    assert os.path.isabs(entry["wav"]) and os.path.isfile(entry["wav"])
    assert entry["target"] == int(clip_id.split("-")[-1])
    assert entry["duration"] == pytest.approx(1.0)
    assert entry["event_wav"].endswith(f"stems/{clip_id}_event.wav")
    assert os.path.isfile(entry["background_wav"])

    other = _outputs(tmp_path / "other")
    prepare_esc50(
        tiny_esc50, *other, train_fold_nums=[2, 3, 4], valid_fold_nums=[1], test_fold_nums=5
    )
    assert {e["fold"] for e in _load(other[1]).values()} == {1}
    assert len(_load(other[0])) == 30


def test_manifest_without_stems_has_no_stem_keys(esc_copy, tmp_path):
    out = _outputs(tmp_path)
    prepare_esc50(esc_copy, *out)
    assert all("event_wav" not in e for e in _load(out[0]).values())


@pytest.mark.parametrize(
    "folds, match",
    [
        (([0, 1, 2], [4], [5]), "fold 0"),
        (([1, 2, 3], [6], [5]), "fold 6"),
        (([1, 2, 3], [3], [5]), r"fold\(s\) \[3\] appear in both"),
        (([1, 2, 3], [4], []), "test_fold_nums is empty"),
        (([1, 2, 3], ["4"], [5]), "not an integer"),
        (([1, 1, 2], [4], [5]), "twice"),
    ],
)
def test_invalid_folds_raise(tiny_esc50, tmp_path, folds, match):
    with pytest.raises(ValueError, match=match):
        prepare_esc50(tiny_esc50, *_outputs(tmp_path), *folds)
    assert not os.path.exists(_outputs(tmp_path)[0])


def test_check_folds_accepts_single_ints():
    assert check_folds(1, (2, 3), [4, 5]) == ([1], [2, 3], [4, 5])


def test_missing_data_folder_and_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        prepare_esc50(str(tmp_path / "does_not_exist"), *_outputs(tmp_path))
    (tmp_path / "empty" / "audio").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"meta/esc50\.csv"):
        prepare_esc50(str(tmp_path / "empty"), *_outputs(tmp_path))


def test_missing_audio_file_is_named(esc_copy, tmp_path):
    victim = sorted(os.listdir(os.path.join(esc_copy, "audio")))[0]  # fold 1: train
    os.remove(os.path.join(esc_copy, "audio", victim))
    with pytest.raises(FileNotFoundError, match=victim):
        prepare_esc50(esc_copy, *_outputs(tmp_path))


def test_malformed_csv(esc_copy, tmp_path):
    csv_path = os.path.join(esc_copy, "meta", "esc50.csv")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "category"])
        writer.writerows([[r["filename"], r["fold"], r["category"]] for r in rows])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['target', 'esc10'"):
        prepare_esc50(esc_copy, *_outputs(tmp_path))


def test_fold_without_clips(esc_copy, tmp_path):
    csv_path = os.path.join(esc_copy, "meta", "esc50.csv")
    with open(csv_path) as f:
        lines = [line for line in f if not line.startswith("5-")]
    with open(csv_path, "w") as f:
        f.writelines(lines)
    with pytest.raises(ValueError, match=r"no clip in fold\(s\) \[5\]"):
        prepare_esc50(esc_copy, *_outputs(tmp_path))


def test_prepare_is_idempotent(tiny_esc50, tmp_path, caplog):
    out = _outputs(tmp_path)
    prepare_esc50(tiny_esc50, *out)
    mtimes = [os.stat(p).st_mtime_ns for p in out]
    with caplog.at_level(logging.INFO, logger="audio_interpretability.data.esc50"):
        prepare_esc50(tiny_esc50, *out)
    assert [os.stat(p).st_mtime_ns for p in out] == mtimes
    assert "skipping" in caplog.text
    # other folds: the manifests are rewritten
    prepare_esc50(tiny_esc50, *out, train_fold_nums=[1, 2], valid_fold_nums=[3, 4])
    assert len(_load(out[0])) == 20 and len(_load(out[1])) == 20


@pytest.fixture
def prepared(tiny_esc50, tmp_path):
    out = _outputs(tmp_path)
    prepare_esc50(tiny_esc50, *out)
    return dict(zip(("train", "valid", "test"), out))


def test_dataio_prep_items(prepared, tmp_path):
    encoder_file = str(tmp_path / "label_encoder.txt")
    data = dataio_prep(prepared, 16000, encoder_file)
    assert set(data) == {"train", "valid", "test", "label_encoder"}
    assert len(data["train"]) == 30
    train_manifest = _load(prepared["train"])
    item = data["train"][0]
    assert set(item) == {
        "id",
        "sig",
        "class_string",
        "class_string_encoded",
        "event_sig",
        "background_sig",
    }
    assert item["sig"].shape == (16000,) and item["sig"].dtype == torch.float32
    assert item["sig"].abs().max() == pytest.approx(1.0)
    assert item["class_string_encoded"].shape == (1,)
    assert int(item["class_string_encoded"]) == train_manifest[item["id"]]["target"]
    # stems scaled like the mixture: mixture = event + background (16-bit quantisation)
    torch.testing.assert_close(
        item["event_sig"] + item["background_sig"], item["sig"], atol=1e-3, rtol=0
    )
    encoder = data["label_encoder"]
    for entry in train_manifest.values():
        assert encoder.encode_label(entry["class_string"]) == entry["target"]
    assert os.path.isfile(encoder_file)
    # reloaded from the file
    again = dataio_prep(prepared, 16000, encoder_file)
    assert again["label_encoder"].lab2ind == encoder.lab2ind


def test_label_encoder_mismatch_raises(prepared, tmp_path):
    encoder_file = tmp_path / "label_encoder.txt"
    encoder_file.write_text(
        "'harmonic_150hz' => 3\n'other' => 0\n================\n'starting_index' => 0\n"
    )
    with pytest.raises(ValueError, match="delete the file to rebuild it"):
        dataio_prep(prepared, 16000, str(encoder_file))


def test_silent_clip_stays_zero(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(8000), 8000)
    _write_manifest(
        tmp_path / "m.json",
        {"s": {"wav": str(path), "class_string": "x", "target": 0, "fold": 1, "duration": 1.0}},
    )
    data = dataio_prep({"test": str(tmp_path / "m.json")}, 16000, str(tmp_path / "enc.txt"))
    sig = data["test"][0]["sig"]
    assert sig.shape == (16000,)
    assert torch.isfinite(sig).all() and torch.count_nonzero(sig) == 0
    out = peak_normalize(torch.zeros(2, 10))
    assert torch.isfinite(out).all() and out.abs().sum() == 0


def test_stereo_44k_becomes_mono_16k(tmp_path):
    t = np.arange(44100) / 44100
    left, right = np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1) * 0.5, 44100, subtype="FLOAT")
    wav = load_audio(str(path), 16000)
    assert wav.shape == (16000,)
    spectrum = torch.fft.rfft(wav).abs()
    assert int(spectrum.argmax()) == 440  # 1 s at 16 kHz: 1 Hz per bin
    assert wav[1000:-1000].abs().max() == pytest.approx(0.375, rel=0.01)  # mean of channels

    _write_manifest(
        tmp_path / "m.json",
        {"s": {"wav": str(path), "class_string": "x", "target": 0, "fold": 1, "duration": 1.0}},
    )
    data = dataio_prep({"test": str(tmp_path / "m.json")}, 16000, str(tmp_path / "enc.txt"))
    sig = data["test"][0]["sig"]
    assert sig.shape == (16000,) and sig.abs().max() == pytest.approx(1.0)


def test_corrupt_wav_is_named(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    with pytest.raises(ValueError, match="broken.wav"):
        load_audio(str(path), 16000)
    _write_manifest(
        tmp_path / "m.json",
        {"b": {"wav": str(path), "class_string": "x", "target": 0, "fold": 1, "duration": 1.0}},
    )
    data = dataio_prep({"test": str(tmp_path / "m.json")}, 16000, str(tmp_path / "enc.txt"))
    with pytest.raises(ValueError, match="broken.wav"):
        data["test"][0]
    with pytest.raises(FileNotFoundError, match="nothing.wav"):
        load_audio(str(tmp_path / "nothing.wav"), 16000)


def test_cache_matches_decoding_and_tracks_changes(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "clip.wav"
    sf.write(path, rng.uniform(-0.5, 0.5, 22050), 22050, subtype="FLOAT")
    cache = AudioCache(str(tmp_path / "cache"), 16000)
    first = cache.load(str(path))
    assert len(os.listdir(tmp_path / "cache")) == 1
    torch.testing.assert_close(first, load_audio(str(path), 16000))
    torch.testing.assert_close(cache.load(str(path)), first)  # from the .npy
    sf.write(path, rng.uniform(-0.5, 0.5, 44100), 22050, subtype="FLOAT")  # file changes
    assert cache.load(str(path)).shape == (32000,)


def test_dataio_prep_with_cache(prepared, tmp_path):
    cache = tmp_path / "cache"
    plain = dataio_prep(prepared, 16000, str(tmp_path / "enc.txt"))["valid"][3]
    cached = dataio_prep(prepared, 16000, str(tmp_path / "enc.txt"), cache_folder=str(cache))
    torch.testing.assert_close(cached["valid"][3]["sig"], plain["sig"])
    assert len(os.listdir(cache)) == 3  # mixture, event, background
    torch.testing.assert_close(cached["valid"][3]["event_sig"], plain["event_sig"])
