"""Bad audio is caught when it is loaded (issue 14): the reader, and the entry points using it.

Each damaged file is written by hand under ``tmp_path`` (the shared synthetic folders are copied
first): NaN / Inf samples, a WAV cut short, corrupt bytes, an empty file, a directory, a silent
clip. The reader (:mod:`audio_interpretability.data.audio`) raises ``AudioError`` (a
``ValueError``), ``FileNotFoundError`` or ``IsADirectoryError`` naming the file, or warns for a
silent one; so do the ESC-50 preparation and pipeline, the classification recipe, WHAM! noise,
LJSpeech clips and ``eval.py --single_sample``. Property-based tests (hypothesis) feed the
reader random bytes, random WAV header damage and random float arrays, and the ESC-50 meta
parser random rows. docs/RELIABILITY.md ("Bad audio") lists the cases and these tests.
"""

import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import load_script
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from audio_interpretability.data.audio import (
    AudioError,
    audio_info,
    declared_frames,
    read_audio,
    read_audio_segment,
)
from audio_interpretability.data.esc50 import (
    ESC50_COLUMNS,
    _read_meta,
    dataio_prep,
    load_audio,
    prepare_esc50,
)
from audio_interpretability.data.ood import LJSpeechClips, generate_speech_like
from audio_interpretability.data.wham import WhamNoise


def _hypothesis_skips_unimportable_lazy_modules() -> None:
    """Hypothesis (>= 6.131) reads ``__file__`` of every module in ``sys.modules`` to collect
    constants; SpeechBrain's lazy modules import their target on that read, and
    ``speechbrain.integrations.k2_fsa`` (k2 not installed) then raises ``ImportError`` and
    aborts the collection of the whole suite. Mark such modules as already seen. (Move this to
    conftest.py if other test files use hypothesis.)"""
    from hypothesis.internal.conjecture import providers

    original = providers._get_local_constants
    if getattr(original, "_skips_lazy", False):
        return

    def get_local_constants():
        with warnings.catch_warnings():  # SpeechBrain's "deprecated, redirecting" notes
            warnings.simplefilter("ignore")
            for module in list(sys.modules.values()):
                if id(module) not in providers._seen_modules:
                    try:
                        getattr(module, "__file__", None)
                    except Exception:
                        providers._seen_modules.add(id(module))
            return original()

    get_local_constants._skips_lazy = True
    providers._get_local_constants = get_local_constants


_hypothesis_skips_unimportable_lazy_modules()
if not os.getenv("HYPOTHESIS_STORAGE_DIRECTORY"):  # its caches go to a temporary folder, not
    set_hypothesis_home_dir(tempfile.mkdtemp(prefix="hypothesis_"))  # <repo>/.hypothesis
ROOT = Path(__file__).resolve().parents[1]
AUDIO_LOGGER = "audio_interpretability.data.audio"
PROPERTY = settings(  # no example database: tests never write into the repo; derandomized:
    # the same examples in every run, so CI cannot flake (set derandomize=False to explore)
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------------------------
# Damaged files, written by hand
# --------------------------------------------------------------------------------------------
def tone(n: int = 16000, rate: int = 16000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)


def write_nan(path, value=np.nan, at=(100, 2000), rate=16000, n=16000) -> Path:
    """A float WAV whose samples ``at`` are ``value`` (NaN or Inf)."""
    data = tone(n, rate)
    data[list(at)] = value
    sf.write(path, data, rate, subtype="FLOAT")
    return Path(path)


def write_truncated(path, subtype="PCM_16", cut=1001) -> Path:
    """A WAV cut ``cut`` bytes short of what its header declares."""
    sf.write(path, tone(), 16000, subtype=subtype)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-cut])
    return Path(path)


def damage(kind: str, path: Path) -> Path:
    """Write a bad file of ``kind`` at ``path`` (over the good one, if any)."""
    if kind == "nan":
        return write_nan(path)
    if kind == "inf":
        return write_nan(path, value=np.inf)
    if kind == "truncated":
        return write_truncated(path)
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
        return path
    if kind == "empty":
        path.write_bytes(b"")
        return path
    raise ValueError(kind)


BAD = {
    "nan": r"holds 2 NaN and 0 Inf sample\(s\) \(first at 0\.006 s\)",
    "inf": r"holds 0 NaN and 2 Inf sample\(s\)",
    "truncated": r"is truncated: its header declares 16000 frames \(1\.000 s\) but it holds 15499",
    "corrupt": r"cannot be decoded \(.*\): it is corrupt or not audio",
    "empty": r"is empty \(0 bytes\)",
}


def message_of(path) -> str:
    """The start of every message about ``path``."""
    import re

    return "file " + re.escape(str(path)) + ": "


# --------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", BAD)
def test_reader_names_each_bad_file(tmp_path, kind):
    path = damage(kind, tmp_path / f"{kind}.wav")
    with pytest.raises(AudioError, match=message_of(path) + BAD[kind] + r"[^;]*; \w") as info:
        read_audio(str(path), 16000)
    assert isinstance(info.value, ValueError) and info.value.path == str(path)
    with pytest.raises(AudioError, match=BAD[kind]):
        load_audio(str(path), 16000)  # the first API's name, same checks


def test_reader_missing_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=message_of(tmp_path / "no.wav") + "does not"):
        read_audio(str(tmp_path / "no.wav"), 16000)
    with pytest.raises(IsADirectoryError, match=message_of(tmp_path) + "is a directory"):
        read_audio(str(tmp_path), 16000)


def test_truncated_float_wav_and_header_only(tmp_path):
    path = write_truncated(tmp_path / "f.wav", subtype="FLOAT", cut=4000)
    with pytest.raises(AudioError, match="declares 16000 frames .* but it holds 15000"):
        audio_info(str(path))
    sf.write(tmp_path / "h.wav", tone(), 16000, subtype="PCM_16")
    head = (tmp_path / "h.wav").read_bytes()[:44]  # the header, no sample left
    (tmp_path / "h.wav").write_bytes(head)
    with pytest.raises(AudioError, match="declares 16000 frames .* but it holds 0"):
        read_audio(str(tmp_path / "h.wav"), 16000)
    assert declared_frames(str(tmp_path / "h.wav")) == 16000


def test_complete_files_are_not_truncated(tmp_path):
    """Odd lengths, stereo, 24-bit, FLAC: nothing reported; a 0-frame WAV holds no sample."""
    for i, (subtype, fmt, channels) in enumerate(
        [("PCM_16", "WAV", 1), ("PCM_24", "WAV", 2), ("FLOAT", "WAV", 2), ("PCM_16", "FLAC", 1)]
    ):
        path = tmp_path / f"ok{i}.{fmt.lower()}"
        data = np.tile(tone(12345)[:, None], (1, channels))
        sf.write(path, data, 16000, subtype=subtype, format=fmt)
        assert read_audio(str(path), 16000).shape == (12345,)
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="holds no sample"):
        read_audio(str(tmp_path / "zero.wav"), 16000)


def test_silent_file_warns_once(tmp_path, caplog):
    for name, data in (("zeros.wav", np.zeros(8000)), ("tiny.wav", np.full(8000, 1e-8))):
        path = tmp_path / name
        sf.write(path, data, 16000, subtype="FLOAT")
        with caplog.at_level(logging.WARNING, logger=AUDIO_LOGGER):
            caplog.clear()
            wav = read_audio(str(path), 16000, normalize=True)
            read_audio(str(path), 16000)
        assert wav.shape == (8000,) and torch.isfinite(wav).all()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and warnings[0].startswith(f"file {path}: is silent")


def test_odd_sample_rate_is_refused_not_resampled(tmp_path):
    path = tmp_path / "odd.wav"
    sf.write(path, tone(4410, 44101), 44101)
    assert read_audio(str(path), None).shape == (4410,)  # native rate: fine
    with pytest.raises(AudioError, match="unusual sample rate 44101 Hz.*resample it first"):
        read_audio(str(path), 16000)


def test_segment_reader_checks_what_it_reads(tmp_path):
    path = write_nan(tmp_path / "n.wav", at=(12000,))
    assert torch.isfinite(read_audio_segment(str(path), 16000, 0, 8000)).all()  # before the NaN
    with pytest.raises(AudioError, match=message_of(path) + r".*NaN.*first at 0\.750 s"):
        read_audio_segment(str(path), 16000, 8000, 8000)
    with pytest.raises(AudioError, match="is truncated"):
        read_audio_segment(str(write_truncated(tmp_path / "t.wav")), 8000, 0, 100)


def test_error_pickles_for_dataloader_workers():
    import pickle

    err = pickle.loads(pickle.dumps(AudioError("a.wav", "is bad", "fix it")))
    assert str(err) == "file a.wav: is bad; fix it" and err.path == "a.wav"


# --------------------------------------------------------------------------------------------
# Property-based: random input -> a finite tensor or a named AudioError
# --------------------------------------------------------------------------------------------
def _read_or_named_error(path: Path, sample_rate):
    try:
        wav = read_audio(str(path), sample_rate)
    except AudioError as err:
        assert str(err).startswith(f"file {path}: ") and err.path == str(path)
        return None
    assert wav.dim() == 1 and wav.dtype == torch.float32 and torch.isfinite(wav).all()
    return wav


@PROPERTY
@given(data=st.binary(min_size=0, max_size=2048))
def test_random_bytes(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.wav"
        path.write_bytes(data)
        _read_or_named_error(path, 16000)


def _valid_wav(subtype: str, channels: int) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x.wav")
        sf.write(path, np.tile(tone(800, 8000)[:, None], (1, channels)), 8000, subtype=subtype)
        return Path(path).read_bytes()


VALID_WAVS = {
    (s, c): _valid_wav(s, c) for s in ("PCM_16", "FLOAT") for c in (1, 2)
}  # fmt: skip


@PROPERTY
@given(
    which=st.sampled_from(sorted(VALID_WAVS)),
    edits=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 1700),
    sample_rate=st.sampled_from([None, 16000]),
)
def test_random_header_damage(which, edits, cut, sample_rate):
    """Bytes of the header (and fmt / fact / data chunk sizes) overwritten, the end cut off."""
    data = bytearray(VALID_WAVS[which])
    for position, value in edits:
        data[position] = value
    data = bytes(data[: max(0, len(data) - cut)])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hdr.wav"
        path.write_bytes(data)
        wav = _read_or_named_error(path, sample_rate)
        if not edits and cut > 0:
            assert wav is None  # cut short: always reported
        if not edits and cut == 0:
            assert wav is not None


@PROPERTY
@given(
    samples=st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=300
    ),
    channels=st.integers(1, 2),
)
def test_random_float_arrays(samples, channels):
    data = np.array(samples, dtype=np.float32)
    data = np.tile(data[:, None], (1, channels))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "floats.wav"
        sf.write(path, data, 8000, subtype="FLOAT")
        wav = _read_or_named_error(path, 16000)
        assert (wav is None) == (not np.isfinite(data).all())


# --------------------------------------------------------------------------------------------
# The ESC-50 meta parser
# --------------------------------------------------------------------------------------------
HEADER = ",".join(ESC50_COLUMNS)
GOOD_ROW = "1-100-A-0.wav,1,0,dog,True,100,A"


def _meta(folder: str, text: str | bytes) -> str:
    path = os.path.join(folder, "esc50.csv")
    with open(path, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    "rows, match",
    [
        (["1-1-A-0.wav,1,0"], r"line 2: has 3 fields, the header 7"),
        ([GOOD_ROW + ",extra"], r"line 2: has 8 fields, the header 7"),
        (["x.wav,one,0,dog,True,1,A"], r"line 2: fold='one' and target='0' must be integers"),
        (["x.wav,1,-3,dog,True,1,A"], r"line 2: .* must not be negative"),
        ([",1,0,dog,True,1,A"], r"line 2: the filename is empty"),
        (["x.wav,1,0, ,True,1,A"], r"line 2: the category is empty"),
        ([GOOD_ROW, GOOD_ROW], r"line 3: 1-100-A-0.wav is already listed on line 2"),
    ],
)
def test_meta_rows_are_checked(tmp_path, rows, match):
    path = _meta(str(tmp_path), "\n".join([HEADER, *rows]) + "\n")
    with pytest.raises(ValueError, match=f"{path}, {match}; fix or regenerate the meta file"):
        _read_meta(path)


def test_meta_not_utf8(tmp_path):
    path = _meta(str(tmp_path), HEADER.encode() + b"\n\xff\xfe,1,0,dog,True,1,A\n")
    with pytest.raises(ValueError, match=f"{path}: is not UTF-8 text"):
        _read_meta(path)


FIELD = st.text(alphabet=st.sampled_from(list("ab1-09.,\"' \r\n\t\x00é")), min_size=0, max_size=8)


@PROPERTY
@given(
    header=st.sampled_from([HEADER, HEADER + ",more", "filename,fold,target", ""]),
    rows=st.lists(st.lists(FIELD, min_size=0, max_size=9), max_size=6),
    raw=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_meta_random_rows(header, rows, raw):
    """Random rows (quotes, separators, newlines, NUL, missing / extra fields): each call
    returns well-typed rows or raises a ValueError naming the file."""
    text = "\n".join([header, *(",".join(r) for r in rows)]).encode("utf-8")
    if raw is not None:
        text += raw
    with tempfile.TemporaryDirectory() as folder:
        path = _meta(folder, text)
        try:
            parsed = _read_meta(path)
        except ValueError as err:
            assert str(err).startswith(path), str(err)
            return
        names = [row["filename"] for row in parsed]
        assert len(names) == len(set(names))
        for row in parsed:
            assert isinstance(row["fold"], int) and isinstance(row["target"], int)
            assert row["fold"] >= 0 and row["target"] >= 0
            assert all(
                isinstance(row[c], str) for c in ESC50_COLUMNS if c not in ("fold", "target")
            )
            assert row["filename"].strip() and row["category"].strip()


# --------------------------------------------------------------------------------------------
# ESC-50 preparation and pipeline
# --------------------------------------------------------------------------------------------
@pytest.fixture
def esc50_copy(tiny_esc50, tmp_path) -> Path:
    """A private copy of the tiny synthetic ESC-50 folder (the shared one is read-only)."""
    return Path(shutil.copytree(tiny_esc50, tmp_path / "esc50"))


def fold_clip(folder: Path, fold: int) -> Path:
    return sorted((folder / "audio").glob(f"{fold}-*.wav"))[0]


def manifests(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "manifest" / f"{s}.json") for s in ("train", "valid", "test")]


@pytest.mark.parametrize("kind", [*BAD, "missing", "directory"])
def test_prepare_stops_at_a_bad_clip_or_leaves_it_out(esc50_copy, tmp_path, kind, caplog):
    victim = fold_clip(esc50_copy, 5)
    if kind == "missing":
        victim.unlink()
        error, match = FileNotFoundError, f"{victim} is listed in .* but does not exist"
    elif kind == "directory":
        victim.unlink()
        victim.mkdir()
        error, match = IsADirectoryError, message_of(victim) + "is a directory"
    else:
        damage(kind, victim)
        error = AudioError
        match = message_of(victim) + BAD[kind] + ".*or pass --skip_bad_audio True"
    out = manifests(tmp_path)
    with pytest.raises(error, match=match):
        prepare_esc50(str(esc50_copy), *out)
    assert not any(os.path.exists(p) for p in out)

    with caplog.at_level(logging.WARNING):
        prepare_esc50(str(esc50_copy), *out, skip_bad_audio=True)
    test = json.loads(Path(out[2]).read_text())
    assert len(test) == 9 and victim.stem not in test
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("leaving out" in w and str(victim) in w for w in warnings)
    assert any("left 1 bad clip(s) out" in w for w in warnings)
    options = json.loads((tmp_path / "manifest" / "esc50_prepare_options.json").read_text())
    assert options["left_out"] == [str(victim)]

    caplog.clear()  # idempotent: skipped, and the count reported again
    with caplog.at_level(logging.INFO):
        prepare_esc50(str(esc50_copy), *out, skip_bad_audio=True)
    text = caplog.text
    assert "up to date" in text and "1 bad clip(s) were left out" in text
    with pytest.raises(error, match=match):  # the option is part of the signature
        prepare_esc50(str(esc50_copy), *out)


def test_nan_training_clip_stops_preparation(esc50_copy, tmp_path):
    """A NaN training clip: named at preparation (SpeechBrain's "Loss is not finite" before)."""
    victim = write_nan(fold_clip(esc50_copy, 2))
    with pytest.raises(AudioError, match=message_of(victim) + "holds 2 NaN"):
        prepare_esc50(str(esc50_copy), *manifests(tmp_path), train_fold_nums=[1, 2, 3])


def test_silent_clip_is_kept_with_a_warning(esc50_copy, tmp_path, caplog):
    victim = fold_clip(esc50_copy, 1)
    sf.write(victim, np.zeros(16000), 16000)
    with caplog.at_level(logging.WARNING, logger=AUDIO_LOGGER):
        prepare_esc50(str(esc50_copy), *manifests(tmp_path))
    assert f"file {victim}: is silent" in caplog.text
    assert victim.stem in json.loads(Path(manifests(tmp_path)[0]).read_text())


@pytest.mark.parametrize("cache", [False, True])
def test_pipeline_names_a_clip_damaged_after_preparation(esc50_copy, tmp_path, cache):
    out = manifests(tmp_path)
    prepare_esc50(str(esc50_copy), *out)
    victim = fold_clip(esc50_copy, 5)
    write_nan(victim)
    data = dataio_prep(
        {"test": out[2]},
        16000,
        str(tmp_path / "enc.txt"),
        cache_folder=str(tmp_path / "cache") if cache else None,
    )
    index = data["test"].data_ids.index(victim.stem)
    with pytest.raises(AudioError, match=message_of(victim) + "holds 2 NaN"):
        data["test"][index]


# --------------------------------------------------------------------------------------------
# WHAM! and LJSpeech
# --------------------------------------------------------------------------------------------
@pytest.fixture
def wham_copy(tiny_wham, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_wham, tmp_path / "wham_noise"))


@pytest.mark.parametrize("max_cache_mb", [512.0, 0.0])  # whole files in memory / crops read
def test_wham_nan_file_is_named(wham_copy, max_cache_mb):
    victim = sorted((wham_copy / "tr").glob("*.wav"))[0]
    n = sf.info(victim).frames
    sf.write(victim, np.full((n, 2), np.nan, np.float32), 16000, subtype="FLOAT")
    noise = WhamNoise(str(wham_copy), sample_rate=16000, split="tr", max_cache_mb=max_cache_mb)
    with pytest.raises(AudioError, match=message_of(victim) + ".*NaN"):
        for _ in range(20):
            noise.sample(8, 4000)


def test_wham_truncated_or_corrupt_file_fails_at_construction(wham_copy):
    victim = sorted((wham_copy / "cv").glob("*.wav"))[0]
    victim.write_bytes(victim.read_bytes()[:-1000])
    with pytest.raises(AudioError, match=message_of(victim) + "is truncated"):
        WhamNoise(str(wham_copy), sample_rate=16000, split="cv")
    victim.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match=message_of(victim) + "cannot be decoded"):
        WhamNoise(str(wham_copy), sample_rate=16000, split="cv")


@pytest.mark.parametrize("max_cache_mb", [512.0, 0.0])
def test_wham_silent_file_warns(wham_copy, caplog, max_cache_mb):
    for victim in sorted((wham_copy / "tt").glob("*.wav")):
        sf.write(victim, np.zeros((sf.info(victim).frames, 2)), 16000)
    noise = WhamNoise(str(wham_copy), sample_rate=16000, split="tt", max_cache_mb=max_cache_mb)
    with caplog.at_level(logging.WARNING, logger=AUDIO_LOGGER):
        out = noise.sample(4, 4000)
    assert out.abs().max() == 0
    assert "is silent" in caplog.text and str(wham_copy / "tt") in caplog.text


def test_ljspeech_nan_file_is_named(tmp_path):
    folder = tmp_path / "LJSpeech-1.1"
    generate_speech_like(str(folder), n_files=2, duration=0.5, ljspeech_layout=True)
    victim = sorted((folder / "wavs").glob("*.wav"))[1]
    write_nan(victim, rate=22050)
    clips = LJSpeechClips(str(folder), sample_rate=16000)
    assert torch.isfinite(clips.load(0)).all()
    with pytest.raises(AudioError, match=message_of(victim) + ".*NaN"):
        clips.load(1)


# --------------------------------------------------------------------------------------------
# Entry points: the classification recipe, eval.py --single_sample
# --------------------------------------------------------------------------------------------
def _load(name: str, relative: str):
    module = load_script(name, ROOT / relative)
    return module


def classification_argv(data_folder, out, *extra):
    return [
        str(ROOT / "hparams" / "classifier_cnn14.yaml"),
        "--data_folder", str(data_folder),
        "--output_folder", str(out / "exp"),
        "--pretrained_folder", str(out / "pretrained"),
        "--out_n_neurons", "5",
        "--number_of_epochs", "1",
        "--batch_size", "10",
        "--noprogressbar",
        "--base_channels", "2", "--emb_dim", "16", "--n_mels", "32",
        *extra,
    ]  # fmt: skip


def test_classification_recipe_stops_before_training_on_a_nan_clip(esc50_copy, tmp_path):
    recipe = _load("classification_train", "recipes/ESC50/classification/train.py")
    victim = write_nan(fold_clip(esc50_copy, 5))  # a test clip: scored as class 0 before
    with pytest.raises(AudioError, match=message_of(victim) + "holds 2 NaN.*skip_bad_audio"):
        recipe.main(classification_argv(esc50_copy, tmp_path / "a"))
    assert not list((tmp_path / "a").rglob("CKPT+*"))  # nothing trained

    result = recipe.main(
        classification_argv(esc50_copy, tmp_path / "b", "--skip_bad_audio", "True")
    )
    metrics = json.loads(Path(result["test_metrics"]).read_text())
    assert metrics["n_samples"] == 9  # fold 5 without the NaN clip
    log = (tmp_path / "b" / "exp" / "log.txt").read_text()
    assert f"leaving out file {victim}" in log and "left 1 bad clip(s) out" in log


@pytest.fixture(scope="module")
def lmac_checkpoints(tmp_path_factory) -> dict:
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


def single_sample_argv(out, ckpt, wav, device) -> list[str]:
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
    }
    return [str(ROOT / "hparams" / "lmac_cnn14.yaml"), "--noprogressbar"] + [
        x for k, v in options.items() for x in (f"--{k}", str(v))
    ]


@pytest.mark.parametrize("kind", ["nan", "truncated", "directory"])
def test_single_sample_names_the_bad_file(tmp_path, lmac_checkpoints, device, kind):
    evaluate = _load("lmac_eval", "recipes/ESC50/interpret/eval.py")
    if kind == "directory":
        wav = tmp_path / "clips"
        wav.mkdir()
        error, match = IsADirectoryError, message_of(wav) + "is a directory, not an audio file"
    else:
        wav = damage(kind, tmp_path / "clip.wav")
        error, match = AudioError, message_of(wav) + BAD[kind]
    with pytest.raises(error, match=match):
        evaluate.main(single_sample_argv(tmp_path / "run", lmac_checkpoints, wav, device))
    assert not (tmp_path / "run" / "int.wav").exists()


def test_huge_finite_samples_stay_finite(tmp_path):
    """Finite samples near float32's maximum: the channel mean and the resampling filter used to
    overflow to inf (found by test_random_float_arrays under another hypothesis seed)."""
    data = np.tile(np.array([3.4e38, -3.4e38, 3.0e38, 0.0] * 10, dtype=np.float32)[:, None], (1, 2))
    path = tmp_path / "huge.wav"
    sf.write(path, data, 8000, subtype="FLOAT")
    wav = read_audio(str(path), 16000)
    assert wav.dtype == torch.float32 and bool(torch.isfinite(wav).all()) and wav.numel() == 80
