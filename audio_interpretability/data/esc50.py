"""ESC-50 data preparation (JSON manifests per fold split) and SpeechBrain data pipelines.

The real ESC-50 layout is::

    <data_folder>/audio/{fold}-{src_file}-{take}-{target}.wav   (44.1 kHz mono, 5 s)
    <data_folder>/meta/esc50.csv   columns: filename,fold,target,category,esc10,src_file,take

The synthetic generator (:mod:`audio_interpretability.data.synthetic`) writes the same layout
plus ``<data_folder>/stems/<filename-stem>_event.wav`` and ``_background.wav``; when those
stems exist, the manifests and the datasets also carry them (for ground-truth scoring).

:func:`prepare_esc50` is idempotent: it stores its arguments (and the CSV's size and mtime)
next to the manifests and skips the work when they match and the manifests exist.
:func:`dataio_prep` decodes, downmixes, resamples and peak-normalises the audio, and can cache
the decoded and resampled waveforms on disk so that this work is done once, not every epoch
(see ``benchmarks/bench_data_cache.py``).

Bad audio (:mod:`audio_interpretability.data.audio`): :func:`prepare_esc50` decodes every clip
of the chosen folds once and stops at the first bad one (NaN / Inf samples, truncated, corrupt,
empty) with its name, before any training; with ``skip_bad_audio=True`` it leaves the bad
clips out of the manifests instead, with a warning naming each and their count. The dataset
pipeline reads through the same checks, so a clip damaged after preparation (or manifests
used with ``skip_manifest_creation``) still fails with its name.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.data_pipeline import provides, takes
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from audio_interpretability.checkpointing import apply_umask
from audio_interpretability.data.audio import (
    AudioError,
    audio_info,
    check_path,
    peak_normalize,
    peak_scale,
    read_audio,
)

logger = logging.getLogger(__name__)

ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
N_FOLDS = 5
OPTIONS_FILE = "esc50_prepare_options.json"


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        apply_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _normalize_folds(folds, name: str) -> list[int]:
    """Validate one fold list: ints in 1..5, non-empty, no duplicates."""
    if isinstance(folds, (int, np.integer)) and not isinstance(folds, bool):
        folds = [folds]
    if isinstance(folds, (str, bytes)) or not isinstance(folds, Iterable):
        raise ValueError(
            f"{name} must be a list of fold numbers in 1..{N_FOLDS}, got {folds!r}; "
            f"write e.g. {name}=[1, 2, 3]"
        )
    folds = list(folds)
    if not folds:
        raise ValueError(
            f"{name} is empty; give at least one fold number in 1..{N_FOLDS}, e.g. {name}=[5]"
        )
    out = []
    for fold in folds:
        if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)):
            raise ValueError(
                f"{name} contains {fold!r}, which is not an integer fold number; "
                f"use integers in 1..{N_FOLDS}"
            )
        if not 1 <= int(fold) <= N_FOLDS:
            raise ValueError(
                f"{name} contains fold {fold}, but ESC-50 folds are 1..{N_FOLDS}; "
                f"use fold numbers in 1..{N_FOLDS}"
            )
        out.append(int(fold))
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={out} lists a fold twice; list each fold once")
    return out


def check_folds(
    train_fold_nums: Sequence[int], valid_fold_nums: Sequence[int], test_fold_nums: Sequence[int]
) -> tuple[list[int], list[int], list[int]]:
    """Validate the three fold lists: ints in 1..5, each non-empty, pairwise disjoint.

    Arguments
    ---------
    train_fold_nums, valid_fold_nums, test_fold_nums : sequence of int
        Fold numbers of each split (a single int is accepted too).

    Returns
    -------
    tuple of list of int
        The three validated lists.

    Raises
    ------
    ValueError
        Naming the wrong fold and how to fix it.

    Example
    -------
    >>> check_folds([1, 2, 3], [4], 5)
    ([1, 2, 3], [4], [5])
    """
    named = {
        "train_fold_nums": _normalize_folds(train_fold_nums, "train_fold_nums"),
        "valid_fold_nums": _normalize_folds(valid_fold_nums, "valid_fold_nums"),
        "test_fold_nums": _normalize_folds(test_fold_nums, "test_fold_nums"),
    }
    names = list(named)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sorted(set(named[a]) & set(named[b]))
            if common:
                raise ValueError(
                    f"fold(s) {common} appear in both {a}={named[a]} and {b}={named[b]}; "
                    "the train, valid and test folds must be disjoint"
                )
    return named["train_fold_nums"], named["valid_fold_nums"], named["test_fold_nums"]


def _read_meta(csv_path: str) -> list[dict]:
    """Read ``meta/esc50.csv``: check its columns and every row.

    Returns
    -------
    list of dict
        One dict per row (the CSV's columns; ``fold`` and ``target`` as int).

    Raises
    ------
    ValueError
        Naming the file (and the line) for: text that is not UTF-8 or not CSV, a missing
        column, a row with too few or too many fields, an empty filename or category, a
        fold or target that is not a non-negative integer, a filename listed twice.
    """

    def bad(line: int | None, what: str) -> ValueError:
        where = f"{csv_path}, line {line}" if line is not None else str(csv_path)
        return ValueError(f"{where}: {what}; fix or regenerate the meta file")

    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in ESC50_COLUMNS if c not in columns]
            if missing:
                raise ValueError(
                    f"{csv_path} lacks the column(s) {missing} (found {columns}); an ESC-50 "
                    f"meta file has the header {','.join(ESC50_COLUMNS)}"
                )
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as err:
        raise bad(None, f"is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise bad(getattr(reader, "line_num", None), f"is not valid CSV ({err})") from None
    parsed = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        if None in row:
            raise bad(
                line, f"has {len(columns) + len(row[None])} fields, the header {len(columns)}"
            )
        short = [c for c in columns if row[c] is None]
        if short:
            raise bad(line, f"has {len(columns) - len(short)} fields, the header {len(columns)}")
        try:
            fold, target = int(row["fold"]), int(row["target"])
        except (TypeError, ValueError):
            raise bad(
                line, f"fold={row['fold']!r} and target={row['target']!r} must be integers"
            ) from None
        if fold < 0 or target < 0:
            raise bad(line, f"fold={fold} and target={target} must not be negative")
        for column in ("filename", "category"):
            if not row[column].strip():
                raise bad(line, f"the {column} is empty")
        if row["filename"] in first_line:
            raise bad(
                line, f"{row['filename']} is already listed on line {first_line[row['filename']]}"
            )
        first_line[row["filename"]] = line
        parsed.append({**row, "fold": fold, "target": target})
    return parsed


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------
def prepare_esc50(
    data_folder: str,
    save_json_train: str,
    save_json_valid: str,
    save_json_test: str,
    train_fold_nums: Sequence[int] = (1, 2, 3),
    valid_fold_nums: Sequence[int] = (4,),
    test_fold_nums: Sequence[int] = (5,),
    audio_data_folder: str | None = None,
    skip_bad_audio: bool = False,
) -> None:
    """Write SpeechBrain JSON manifests for the train / valid / test fold splits of ESC-50.

    Each manifest maps the clip id (the file name without ``.wav``) to
    ``{"wav": abs path, "class_string": category, "target": int, "fold": int,
    "duration": seconds}`` plus ``"event_wav"`` and ``"background_wav"`` when the folder has
    ``stems/<id>_event.wav`` and ``stems/<id>_background.wav`` (synthetic data).

    Arguments
    ---------
    data_folder : str
        ESC-50 root (with ``audio/`` and ``meta/esc50.csv``).
    save_json_train, save_json_valid, save_json_test : str
        Output manifest paths.
    train_fold_nums, valid_fold_nums, test_fold_nums : sequence of int
        Folds (1..5) of each split; non-empty and pairwise disjoint.
    audio_data_folder : str, optional
        Folder of the clips named in ``meta/esc50.csv`` (default ``<data_folder>/audio``; the
        published recipes' key of the same name).
    skip_bad_audio : bool
        Leave the clips that cannot be used (missing, corrupt, empty, truncated, NaN / Inf
        samples; see :mod:`audio_interpretability.data.audio`) out of the manifests, with a
        warning naming each and their count, instead of stopping at the first one.

    Every clip of the chosen folds is decoded once here (``sf.info`` plus one decode at its
    own rate, no resampling: about 8 ms per 5 s clip on a busy 2-core CPU, 15 s for the 2000
    ESC-50 clips), so that a bad clip stops the
    run before any training or testing, with its name, rather than as "Loss is not finite" or
    a NaN clip silently scored as class 0. The check is as idempotent as the manifests: it is
    skipped when they are up to date (the clips left out are kept in the options file and
    reported again). Silent clips are kept, with a warning.

    Raises
    ------
    ValueError
        Invalid folds, malformed CSV, or a split without clips.
    FileNotFoundError
        Missing data folder, meta file, or an audio file referenced by the CSV.
    AudioError
        A clip that cannot be used (a ``ValueError``; unless ``skip_bad_audio``).

    Example
    -------
    >>> import os, tempfile
    >>> from audio_interpretability.data.synthetic import generate_synthetic_esc50
    >>> root = tempfile.mkdtemp()
    >>> generate_synthetic_esc50(root, n_classes=2, clips_per_class_per_fold=1,
    ...                          duration=0.5, sample_rate=16000)
    >>> out = [os.path.join(root, f"{s}.json") for s in ("train", "valid", "test")]
    >>> prepare_esc50(root, *out)
    >>> import json; len(json.load(open(out[0])))
    6
    """
    train, valid, test = check_folds(train_fold_nums, valid_fold_nums, test_fold_nums)
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"ESC-50 data folder {data_folder!r} does not exist; set data_folder to the folder "
            "that contains audio/ and meta/esc50.csv (or generate one with "
            "recipes/ESC50/prepare_synthetic.py)"
        )
    data_folder = os.path.abspath(data_folder)
    csv_path = os.path.join(data_folder, "meta", "esc50.csv")
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(
            f"{csv_path} not found; data_folder must be the ESC-50 root that contains "
            "meta/esc50.csv and audio/"
        )
    outputs = {"train": save_json_train, "valid": save_json_valid, "test": save_json_test}
    audio_folder = os.path.abspath(audio_data_folder or os.path.join(data_folder, "audio"))
    csv_stat = os.stat(csv_path)
    signature = {
        "data_folder": data_folder,
        "audio_data_folder": audio_folder,
        "csv_size": csv_stat.st_size,
        "csv_mtime_ns": csv_stat.st_mtime_ns,
        "has_stems": os.path.isdir(os.path.join(data_folder, "stems")),
        "folds": {"train": train, "valid": valid, "test": test},
        "outputs": {k: os.path.abspath(v) for k, v in outputs.items()},
        "audio_checked": True,  # manifests written before the audio checks are redone
        "skip_bad_audio": bool(skip_bad_audio),
    }
    options_path = os.path.join(os.path.dirname(os.path.abspath(save_json_train)), OPTIONS_FILE)
    if all(os.path.isfile(p) for p in outputs.values()) and os.path.isfile(options_path):
        try:
            with open(options_path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = None
        left_out = previous.pop("left_out", []) if isinstance(previous, dict) else []
        if previous == signature:
            logger.info("ESC-50 manifests are up to date (%s); skipping preparation", options_path)
            if left_out:
                logger.warning(
                    "skip_bad_audio: %d bad clip(s) were left out of the manifests (listed in %s)",
                    len(left_out),
                    options_path,
                )
            return

    rows = _read_meta(csv_path)
    stems_folder = os.path.join(data_folder, "stems")
    split_of_fold = {f: "train" for f in train}
    split_of_fold.update({f: "valid" for f in valid})
    split_of_fold.update({f: "test" for f in test})
    manifests: dict[str, dict] = {"train": {}, "valid": {}, "test": {}}
    left_out: list[str] = []
    for row in rows:
        split = split_of_fold.get(row["fold"])
        if split is None:
            continue
        wav = os.path.join(audio_folder, row["filename"])
        try:
            duration = _check_clip(wav, csv_path)
        except (AudioError, OSError) as err:
            if not skip_bad_audio:
                if isinstance(err, AudioError):
                    raise err.with_fix(
                        "or pass --skip_bad_audio True to leave the bad clips out"
                    ) from None
                raise
            logger.warning("skip_bad_audio: leaving out %s", err)
            left_out.append(wav)
            continue
        clip_id = os.path.splitext(row["filename"])[0]
        entry = {
            "wav": wav,
            "class_string": row["category"],
            "target": row["target"],
            "fold": row["fold"],
            "duration": duration,
        }
        event = os.path.join(stems_folder, f"{clip_id}_event.wav")
        background = os.path.join(stems_folder, f"{clip_id}_background.wav")
        if os.path.isfile(event) and os.path.isfile(background):
            entry["event_wav"], entry["background_wav"] = event, background
        manifests[split][clip_id] = entry

    for split, folds in (("train", train), ("valid", valid), ("test", test)):
        if not manifests[split]:
            raise ValueError(
                f"{csv_path} has no clip in fold(s) {folds} ({split}); choose folds that the "
                "meta file contains"
            )
    if left_out:
        logger.warning(
            "skip_bad_audio: left %d bad clip(s) out of the manifests (listed in %s)",
            len(left_out),
            options_path,
        )
    for split, path in outputs.items():
        _atomic_write_text(path, json.dumps(manifests[split], indent=2))
        logger.info("Wrote %d clips to %s", len(manifests[split]), path)
    _atomic_write_text(options_path, json.dumps({**signature, "left_out": left_out}, indent=2))


def _check_clip(wav: str, csv_path: str) -> float:
    """Decode ``wav`` once with every check of :func:`read_audio`; return its duration (s)."""
    if not os.path.exists(wav):
        raise FileNotFoundError(
            f"{wav} is listed in {csv_path} but does not exist; restore the audio file "
            "or remove its row from the meta file"
        )
    read_audio(wav, None)  # decoded at its own rate: the checks, no resampling
    return audio_info(wav).duration


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------
def load_audio(path: str, sample_rate: int) -> torch.Tensor:
    """Decode, check, downmix and resample one file (no normalisation): (T,) float32.

    Kept for the callers of the first API; :func:`audio_interpretability.data.audio.read_audio`
    is the reader (its errors: ``FileNotFoundError``, ``IsADirectoryError``, ``AudioError``).

    Example
    -------
    >>> import tempfile, os, numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(path, 0.1 * np.ones((44100, 2)), 44100)
    >>> load_audio(path, 16000).shape
    torch.Size([16000])
    """
    return read_audio(path, sample_rate)


class AudioCache:
    """Disk cache of decoded, mono, resampled waveforms (one float32 ``.npy`` per file).

    The key hashes the source's absolute path, mtime, size and the target sample rate, so
    an edited or replaced file is decoded again. Files are written atomically (temporary
    name, then ``os.replace``), so concurrent data-loader workers never read half a file.

    Arguments
    ---------
    cache_folder : str or None
        Where to store the ``.npy`` files; ``None`` disables caching (decode every time).
    sample_rate : int
        Target sample rate of the cached waveforms.

    Example
    -------
    >>> import tempfile, os, numpy as np, soundfile as sf
    >>> root = tempfile.mkdtemp()
    >>> sf.write(os.path.join(root, "x.wav"), 0.1 * np.ones(800), 8000)
    >>> cache = AudioCache(os.path.join(root, "cache"), sample_rate=16000)
    >>> cache.load(os.path.join(root, "x.wav")).shape
    torch.Size([1600])
    >>> len(os.listdir(os.path.join(root, "cache")))
    1
    """

    def __init__(self, cache_folder: str | None, sample_rate: int):
        self.cache_folder = cache_folder
        self.sample_rate = sample_rate
        if cache_folder is not None:
            os.makedirs(cache_folder, exist_ok=True)

    def _cache_path(self, path: str) -> str:
        stat = os.stat(path)
        key = f"{os.path.abspath(path)}|{stat.st_mtime_ns}|{stat.st_size}|{self.sample_rate}"
        return os.path.join(self.cache_folder, hashlib.sha1(key.encode()).hexdigest() + ".npy")

    def load(self, path: str) -> torch.Tensor:
        """(T,) float32 mono waveform of ``path`` at ``sample_rate`` (cached)."""
        if self.cache_folder is None:
            return read_audio(path, self.sample_rate)
        check_path(path)
        cached = self._cache_path(path)
        if os.path.isfile(cached):
            try:
                return torch.from_numpy(np.load(cached))
            except (OSError, ValueError):
                logger.warning("Unreadable cache file %s for %s; decoding again", cached, path)
        wav = read_audio(path, self.sample_rate)
        fd, tmp = tempfile.mkstemp(dir=self.cache_folder, prefix=".tmp_", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, wav.numpy().astype(np.float32, copy=False))
            apply_umask(tmp)  # mkstemp creates 0600
            os.replace(tmp, cached)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return wav


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
def _label_map(datasets: dict[str, dict]) -> dict[str, int]:
    """class_string -> target from the manifests, checking it is one-to-one."""
    label_to_target: dict[str, int] = {}
    target_to_label: dict[int, str] = {}
    for split, data in datasets.items():
        for clip_id, entry in data.items():
            label, target = entry["class_string"], int(entry["target"])
            if label_to_target.setdefault(label, target) != target:
                raise ValueError(
                    f"class {label!r} has targets {label_to_target[label]} and {target} "
                    f"(clip {clip_id} in the {split} manifest); fix meta/esc50.csv so each "
                    "category has one target, then prepare the manifests again"
                )
            if target_to_label.setdefault(target, label) != label:
                raise ValueError(
                    f"target {target} is used by classes {target_to_label[target]!r} and "
                    f"{label!r} (clip {clip_id} in the {split} manifest); fix meta/esc50.csv"
                )
    return label_to_target


def _label_encoder(label_encoder_file: str, label_to_target: dict[str, int]) -> CategoricalEncoder:
    """Load the encoder if the file exists (and check it), else build it and save it.

    Under DDP every process calls this: the main process writes a missing file, the others
    wait for it (a barrier), then every process loads and checks it.
    """
    saved = False
    if if_main_process() and not os.path.isfile(label_encoder_file):
        _save_label_encoder(label_encoder_file, label_to_target)
        saved = True
    ddp_barrier()
    encoder = CategoricalEncoder()
    try:
        encoder.load(label_encoder_file)
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(
            f"could not read the label encoder {label_encoder_file} ({err}); delete it so "
            "that it is rebuilt from the manifests"
        ) from None
    for label, target in sorted(label_to_target.items(), key=lambda kv: kv[1]):
        if encoder.lab2ind.get(label) != target:
            raise ValueError(
                f"label encoder {label_encoder_file} maps class {label!r} to "
                f"{encoder.lab2ind.get(label)} but the manifests give target {target}; "
                "delete the file to rebuild it (a classifier trained with the old mapping "
                "would then predict wrong labels)"
            )
    if not saved:
        logger.info("Loaded label encoder from %s", label_encoder_file)
    encoder.expect_len(len(encoder.lab2ind))
    return encoder


def _save_label_encoder(label_encoder_file: str, label_to_target: dict[str, int]) -> None:
    """Write the encoder of ``label_to_target`` atomically (the file's mode follows the umask)."""
    encoder = CategoricalEncoder()
    for label, target in sorted(label_to_target.items(), key=lambda kv: kv[1]):
        encoder.enforce_label(label, target)
    folder = os.path.dirname(os.path.abspath(label_encoder_file))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_label_encoder_")
    os.close(fd)
    encoder.save(tmp)
    apply_umask(tmp)  # mkstemp creates 0600
    os.replace(tmp, label_encoder_file)
    logger.info("Saved label encoder (%d classes) to %s", len(encoder), label_encoder_file)


def dataio_prep(
    annotations: dict[str, str],
    sample_rate: int,
    label_encoder_file: str,
    cache_folder: str | None = None,
) -> dict:
    """Build one ``DynamicItemDataset`` per manifest, plus the shared label encoder.

    Arguments
    ---------
    annotations : dict of str to str
        Split name (e.g. "train", "valid", "test") -> JSON manifest written by
        :func:`prepare_esc50`.
    sample_rate : int
        Sample rate of the output waveforms (Hz).
    label_encoder_file : str
        Where the ``CategoricalEncoder`` is saved (loaded and checked if it exists). Its
        index of a class equals the class's ESC-50 ``target``.
    cache_folder : str, optional
        Disk cache for decoded + resampled audio (see :class:`AudioCache`); ``None`` decodes
        every time.

    Returns
    -------
    dict
        ``{split: DynamicItemDataset, ..., "label_encoder": CategoricalEncoder}``. Items have
        keys "id", "sig" (T,), "class_string", "class_string_encoded" (1,), and, when the
        manifest has stems, "event_sig" and "background_sig" (T,) scaled by the factor that
        peak-normalised "sig".

    Example
    -------
    >>> import os, tempfile
    >>> from audio_interpretability.data.synthetic import generate_synthetic_esc50
    >>> root = tempfile.mkdtemp()
    >>> generate_synthetic_esc50(root, n_classes=2, clips_per_class_per_fold=1,
    ...                          duration=0.5, sample_rate=22050)
    >>> out = [os.path.join(root, f"{s}.json") for s in ("train", "valid", "test")]
    >>> prepare_esc50(root, *out)
    >>> data = dataio_prep(dict(zip(("train", "valid", "test"), out)), 16000,
    ...                    os.path.join(root, "label_encoder.txt"))
    >>> item = data["train"][0]
    >>> item["sig"].shape, item["class_string_encoded"].shape, "event_sig" in item
    (torch.Size([8000]), torch.Size([1]), True)
    """
    manifests = {}
    for split, path in annotations.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"manifest {path} for split {split!r} does not exist; run prepare_esc50 first"
            )
        with open(path, encoding="utf-8") as f:
            manifests[split] = json.load(f)
    encoder = _label_encoder(label_encoder_file, _label_map(manifests))
    cache = AudioCache(cache_folder, sample_rate)

    @takes("wav")
    @provides("sig")
    def audio_pipeline(wav):
        return peak_normalize(cache.load(wav))

    @takes("wav", "event_wav", "background_wav")
    @provides("sig", "event_sig", "background_sig")
    def audio_stems_pipeline(wav, event_wav, background_wav):
        sig = cache.load(wav)
        scale = peak_scale(sig)  # (1,)
        event, background = cache.load(event_wav), cache.load(background_wav)
        if event.shape != sig.shape or background.shape != sig.shape:
            raise ValueError(
                f"stems of {wav} have {event.numel()} / {background.numel()} samples but the "
                f"mixture has {sig.numel()}; regenerate the stems so they match the mixture"
            )
        return sig * scale, event * scale, background * scale

    @takes("class_string")
    @provides("class_string_encoded")
    def label_pipeline(class_string):
        return encoder.encode_label_torch(class_string)  # (1,)

    datasets: dict = {}
    for split, data in manifests.items():
        has_stems = bool(data) and all(
            "event_wav" in e and "background_wav" in e for e in data.values()
        )
        keys = ["id", "sig", "class_string", "class_string_encoded"]
        if has_stems:
            keys += ["event_sig", "background_sig"]
        datasets[split] = DynamicItemDataset(
            data,
            dynamic_items=[audio_stems_pipeline if has_stems else audio_pipeline, label_pipeline],
            output_keys=keys,
        )
    datasets["label_encoder"] = encoder
    return datasets
