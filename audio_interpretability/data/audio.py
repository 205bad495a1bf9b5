"""One audio reader: decode, check, downmix, resample (and optionally peak-normalise).

Every audio file the package reads (ESC-50 clips and stems, WHAM! noise, LJSpeech files, the
``--single_sample`` file) goes through :func:`read_audio` or, for WHAM!'s crops,
:func:`read_audio_segment`. Both check the file before it reaches a model, so a bad file stops
the run with its name instead of a late, misleading failure ("Loss is not finite", a clip
silently scored as class 0, soundfile's "File does not exist or is not a regular file"):

==========================================  ================================================
case                                        what happens
==========================================  ================================================
missing file                                ``FileNotFoundError``
a directory                                 ``IsADirectoryError``
empty (0 bytes), unreadable, corrupt        :class:`AudioError`
header without any sample                   :class:`AudioError`
truncated (fewer frames than the header)    :class:`AudioError`
NaN / Inf samples                           :class:`AudioError` (count and first position)
silent (peak below ``SILENT_PEAK``)         a logged warning naming the file (once per file)
sample rate needing a huge resampling       :class:`AudioError` (``MAX_RESAMPLE_TAPS``)
==========================================  ================================================

Every message reads ``file <path>: <reason>; <what to do>``. :class:`AudioError` is a
``ValueError``, so callers that caught ``ValueError`` before keep working.

Truncation: libsndfile corrects a WAV's frame count from the file size, so ``sf.info`` alone
does not see a file cut short. For RIFF/WAVE files the ``data`` chunk's declared size is read
from the header (:func:`declared_frames`) and compared with what libsndfile will decode; for
every format the number of decoded frames is compared with ``sf.info(path).frames``.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import functools
import logging
import math
import os
import struct

import numpy as np
import soundfile as sf
import torch
import torchaudio

logger = logging.getLogger(__name__)

#: A waveform whose absolute peak is below this is reported as silent (a warning, not an error).
SILENT_PEAK = 1e-6
#: Largest (new / gcd) * (orig / gcd) of a resampling (its kernel's size, about 80 MB).
MAX_RESAMPLE_TAPS = 20_000_000
_REPLACE = "replace the file with a valid WAV/FLAC (re-download or regenerate it)"
_warned_silent: set[str] = set()

__all__ = [
    "SILENT_PEAK",
    "AudioError",
    "audio_info",
    "declared_frames",
    "peak_normalize",
    "peak_scale",
    "read_audio",
    "read_audio_segment",
    "scan_audio",
]


class AudioError(ValueError):
    """An audio file that cannot be used: ``file <path>: <reason>; <what to do>``.

    Attributes ``path``, ``reason`` and ``fix`` hold the three parts.

    Example
    -------
    >>> str(AudioError("x.wav", "holds no sample", "replace it"))
    'file x.wav: holds no sample; replace it'
    """

    def __init__(self, path: str, reason: str, fix: str = _REPLACE):
        self.path, self.reason, self.fix = str(path), reason, fix
        super().__init__(f"file {path}: {reason}; {fix}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason, self.fix))

    def with_fix(self, extra: str) -> AudioError:
        """The same error with ``extra`` appended to what to do."""
        return AudioError(self.path, self.reason, f"{self.fix}; {extra}")


# --------------------------------------------------------------------------------------------
# Header checks (no decoding)
# --------------------------------------------------------------------------------------------
def check_path(path: str) -> None:
    """Raise ``FileNotFoundError`` / ``IsADirectoryError`` / :class:`AudioError` (empty or
    unreadable) before anything tries to decode ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"file {path}: is a directory, not an audio file; give the path of one audio "
            "file inside it (e.g. a .wav)"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"file {path}: does not exist; check the path (or the manifest / meta file that "
            "lists it)"
        )
    if not os.path.isfile(path):
        raise AudioError(path, "is not a regular file", "give the path of an audio file")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "cannot be read (permission denied)", "fix its permissions")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "is empty (0 bytes)", _REPLACE)


def declared_frames(path: str, block_align: int | None = None) -> int | None:
    """Frames that a RIFF/WAVE header's ``data`` chunk declares, or None (not WAV, unknown size).

    Arguments
    ---------
    path : str
        Audio file.
    block_align : int, optional
        Bytes per frame; read from the ``fmt `` chunk when not given.

    Example
    -------
    >>> import tempfile, os, numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(path, np.zeros(100), 8000, subtype="PCM_16")
    >>> declared_frames(path)
    100
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return None
            endian = "<" if head[:4] == b"RIFF" else ">"
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size)
                    if len(fmt) >= 14:
                        block_align = block_align or struct.unpack(endian + "H", fmt[12:14])[0]
                    f.seek(size % 2, os.SEEK_CUR)
                elif cid == b"data":
                    if size in (0, 0xFFFFFFFF) or not block_align:  # streamed: size unknown
                        return None
                    return size // block_align
                else:
                    f.seek(size + size % 2, os.SEEK_CUR)
    except (OSError, struct.error):
        return None


def audio_info(path: str) -> sf._SoundFileInfo:
    """``sf.info(path)`` after checking that the file is there, readable, decodable, holds
    samples and is not truncated (header only: nothing is decoded).

    Raises
    ------
    FileNotFoundError, IsADirectoryError, AudioError

    Example
    -------
    >>> import tempfile, os, numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(path, np.zeros(800), 8000)
    >>> audio_info(path).frames
    800
    >>> os.truncate(path, 500)
    >>> try:
    ...     audio_info(path)
    ... except AudioError as err:
    ...     print(err.reason)
    is truncated: its header declares 800 frames (0.100 s) but it holds 228 (0.029 s)
    """
    path = os.fspath(path)
    check_path(path)
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
        raise AudioError(path, f"cannot be decoded ({_reason(err)}): it is corrupt or not audio",
                         _REPLACE) from None  # fmt: skip
    if info.format in ("WAV", "WAVEX"):
        declared = declared_frames(path)
        if declared is not None and declared > max(info.frames, 0):
            raise _truncated(path, declared, max(info.frames, 0), info.samplerate)
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(path, "holds no sample", _REPLACE)
    return info


def _reason(err: Exception) -> str:
    """libsndfile's own words, without the path it repeats."""
    text = getattr(err, "error_string", None) or str(err)
    return text.strip().rstrip(".")


def _truncated(path: str, declared: int, found: int, rate: int) -> AudioError:
    def seconds(frames: int) -> str:
        return f" ({frames / rate:.3f} s)" if rate > 0 else ""

    return AudioError(
        path,
        f"is truncated: its header declares {declared} frames{seconds(declared)} but it holds "
        f"{found}{seconds(found)}",
        _REPLACE,
    )


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------
def _decode(path: str, **kwargs) -> tuple[np.ndarray, int]:
    """``sf.read(path, dtype="float32", always_2d=True, **kwargs)`` with named errors."""
    try:
        return sf.read(path, dtype="float32", always_2d=True, **kwargs)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
        raise AudioError(path, f"cannot be decoded ({_reason(err)}): it is corrupt or not audio",
                         _REPLACE) from None  # fmt: skip


def _check_finite(data: np.ndarray, path: str, rate: int, offset: int = 0) -> None:
    """Raise :class:`AudioError` when ``data`` (T, C) holds NaN or Inf samples."""
    finite = np.isfinite(data)
    if finite.all():
        return
    bad_frames = np.flatnonzero(~finite.all(axis=1))
    n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    first = (offset + int(bad_frames[0])) / rate
    raise AudioError(
        path,
        f"holds {n_nan} NaN and {n_inf} Inf sample(s) (first at {first:.3f} s)",
        "repair or replace the file (e.g. re-export it from its source)",
    )


def _warn_silent(path: str, peak: float, where: str = "") -> None:
    if path in _warned_silent:
        return
    _warned_silent.add(path)
    logger.warning(
        "file %s: is silent%s (peak %.3g < %g); check it (results on a silent input mean "
        "nothing) or replace it",
        path,
        where,
        peak,
        SILENT_PEAK,
    )


@functools.lru_cache(maxsize=16)
def _resampler(source_rate: int, sample_rate: int) -> torchaudio.transforms.Resample:
    """One resampler (its sinc kernel built once) per pair of rates, shared by every file.

    Same result as ``torchaudio.functional.resample``, which rebuilds the kernel at each call
    (about 0.3 s for 44.1 -> 16 kHz on a CPU; it dominated the first epoch on ESC-50).
    """
    return torchaudio.transforms.Resample(source_rate, sample_rate)


def _resample(wav: torch.Tensor, path: str, source_rate: int, sample_rate: int) -> torch.Tensor:
    """(T,) -> (T',) at ``sample_rate``, refusing rates whose polyphase kernel would be huge.

    torchaudio's kernel has about ``(new / g) * (orig / g)`` taps (``g = gcd``): 70 k for
    44.1 -> 16 kHz, but 700 M (2.8 GB) for a corrupt header's 44101 Hz.
    """
    source_rate, sample_rate = int(source_rate), int(sample_rate)
    if source_rate == sample_rate:
        return wav
    g = math.gcd(source_rate, sample_rate)
    if (source_rate // g) * (sample_rate // g) > MAX_RESAMPLE_TAPS:
        raise AudioError(
            path,
            f"has the unusual sample rate {source_rate} Hz, which cannot be resampled to "
            f"{sample_rate} Hz without a huge filter",
            f"resample it first (e.g. sox {os.path.basename(path)} -r {sample_rate} out.wav), "
            "or replace it if the rate is wrong (a corrupt header)",
        )
    return _resampler(source_rate, sample_rate)(wav).contiguous()


def _to_mono(data: np.ndarray, path: str, rate: int, sample_rate: int | None) -> torch.Tensor:
    samples = torch.from_numpy(data)  # (T, C)
    # Absurd but finite amplitudes (float32's maximum is ~3.4e38) would overflow to inf in the
    # channel mean or the resampling filter's overshoot: process them at unit scale.
    peak = float(samples.abs().max()) if samples.numel() else 0.0
    scale = peak if peak > 1e30 else 1.0
    wav = (samples / scale).mean(dim=1)  # (T, C) -> (T,)
    if sample_rate is not None:
        wav = _resample(wav, path, rate, sample_rate)
    if scale != 1.0:
        big = float(torch.finfo(torch.float32).max)
        wav = (wav.double() * scale).clamp(-big, big).float()
    return wav.contiguous()


def read_audio(
    path: str, sample_rate: int | None, normalize: bool = False, warn_silent: bool = True
) -> torch.Tensor:
    """Decode a whole audio file, check it, downmix it to mono and resample it.

    Arguments
    ---------
    path : str
        Audio file (any format libsndfile reads, e.g. WAV / FLAC).
    sample_rate : int or None
        Output sample rate (Hz), resampled when the file's differs; None keeps the file's.
    normalize : bool
        Divide by the absolute peak (:func:`peak_normalize`; a silent file stays zeros).
    warn_silent : bool
        Log a warning (once per file) when the peak is below :data:`SILENT_PEAK`.

    Returns
    -------
    torch.Tensor
        (T,) float32 waveform, all finite.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        Missing file, or a directory given instead of a file.
    AudioError
        Empty, unreadable, corrupt, sample-less or truncated file; NaN / Inf samples.

    Example
    -------
    >>> import tempfile, os, numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(path, 0.5 * np.ones((44100, 2)), 44100)
    >>> read_audio(path, 16000).shape
    torch.Size([16000])
    >>> float(read_audio(path, None, normalize=True).max())
    1.0
    """
    path = os.fspath(path)
    info = audio_info(path)
    data, rate = _decode(path)  # (T, C)
    if data.shape[0] < info.frames:
        raise _truncated(path, info.frames, data.shape[0], rate)
    _check_finite(data, path, rate)
    wav = _to_mono(data, path, rate, None)  # (T,)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if warn_silent and peak < SILENT_PEAK:
        _warn_silent(path, peak)
    if sample_rate is not None:
        wav = _resample(wav, path, rate, sample_rate)
    return peak_normalize(wav) if normalize else wav


def scan_audio(path: str, block_frames: int = 1 << 20) -> tuple[sf._SoundFileInfo, float]:
    """Check a whole file block by block without holding it (long recordings): the checks of
    :func:`read_audio` (missing, corrupt, truncated, NaN / Inf, silent: a warning) and the
    absolute peak of its mono downmix at the file's rate.

    Arguments
    ---------
    path : str
        Audio file.
    block_frames : int
        Frames decoded at a time (memory: ``block_frames * channels * 4`` bytes).

    Returns
    -------
    info : soundfile info
        ``audio_info(path)``.
    peak : float
        Absolute peak of the mono downmix (0 for a silent file).

    Raises
    ------
    FileNotFoundError, IsADirectoryError, AudioError
        As :func:`read_audio`, before any model work.

    Example
    -------
    >>> import tempfile, os, numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(path, np.stack([0.5 * np.ones(3000), np.zeros(3000)], axis=1), 8000)
    >>> info, peak = scan_audio(path, block_frames=1000)
    >>> info.frames, round(peak, 3)
    (3000, 0.25)
    """
    path = os.fspath(path)
    info = audio_info(path)
    peak, found = 0.0, 0
    try:
        blocks = sf.blocks(path, blocksize=int(block_frames), dtype="float32", always_2d=True)
        for block in blocks:  # (frames, C)
            _check_finite(block, path, info.samplerate, offset=found)
            if block.shape[0]:
                peak = max(peak, float(_to_mono(block, path, info.samplerate, None).abs().max()))
            found += block.shape[0]
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise AudioError(path, f"cannot be decoded ({_reason(err)}): it is corrupt or not audio",
                         _REPLACE) from None  # fmt: skip
    if found < info.frames:
        raise _truncated(path, info.frames, found, info.samplerate)
    if peak < SILENT_PEAK:
        _warn_silent(path, peak)
    return info, peak


def read_audio_segment(
    path: str,
    sample_rate: int,
    start: int,
    length: int,
    info: sf._SoundFileInfo | None = None,
    warn_silent: bool = True,
) -> torch.Tensor:
    """Samples ``[start, start + length)`` (at ``sample_rate``) of a file: only those frames
    are decoded (WHAM!'s random crops of long recordings).

    Arguments
    ---------
    path : str
        Audio file.
    sample_rate : int
        Output sample rate; ``start`` and ``length`` count samples at this rate.
    start, length : int
        First sample and number of samples.
    info : soundfile info, optional
        ``audio_info(path)`` when the caller has it (skips the header checks).
    warn_silent : bool
        Log a warning (once per file) when the crop is silent.

    Returns
    -------
    torch.Tensor
        (<= length,) float32 mono samples, all finite (shorter at the end of the file).

    Raises
    ------
    AudioError
        As :func:`read_audio`; NaN / Inf is checked on the frames read.

    Example
    -------
    >>> import tempfile, os, numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(path, np.random.default_rng(0).uniform(-1, 1, (8000, 2)), 8000)
    >>> read_audio_segment(path, 16000, start=1000, length=4000).shape
    torch.Size([4000])
    """
    path = os.fspath(path)
    info = info if info is not None else audio_info(path)
    ratio = info.samplerate / sample_rate
    src_start = int(start * ratio)
    src_frames = math.ceil(length * ratio) + 1
    data, rate = _decode(path, start=src_start, frames=src_frames)  # (frames, C)
    expected = max(0, min(src_frames, info.frames - src_start))
    if data.shape[0] < expected:
        raise _truncated(path, info.frames, src_start + data.shape[0], rate)
    _check_finite(data, path, rate, offset=src_start)
    wav = _to_mono(data, path, rate, sample_rate)[:length]  # (<= length,)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if warn_silent and wav.numel() and peak < SILENT_PEAK:
        end = (src_start + data.shape[0]) / rate
        _warn_silent(path, peak, f" from {src_start / rate:.3f} s to {end:.3f} s")
    return wav


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------
def peak_normalize(wav: torch.Tensor) -> torch.Tensor:
    """Divide each waveform by its absolute peak; a silent waveform stays zeros (no NaN).

    Arguments
    ---------
    wav : torch.Tensor
        (..., T) waveforms; the peak is taken over the last dimension.

    Returns
    -------
    torch.Tensor
        (..., T) waveforms with peak 1 (or all zeros).

    Example
    -------
    >>> peak_normalize(torch.tensor([[0.0, -0.5, 0.25], [0.0, 0.0, 0.0]]))
    tensor([[ 0.0000, -1.0000,  0.5000],
            [ 0.0000,  0.0000,  0.0000]])
    """
    return wav * peak_scale(wav)


def peak_scale(wav: torch.Tensor) -> torch.Tensor:
    """Factor (..., 1) that peak-normalises ``wav`` (..., T): 1/peak, or 1 for silence.

    Example
    -------
    >>> peak_scale(torch.tensor([0.0, 0.5, -0.25]))
    tensor([2.])
    """
    peak = wav.abs().amax(dim=-1, keepdim=True)  # (..., 1)
    return torch.where(peak > 0, 1.0 / peak.clamp_min(torch.finfo(wav.dtype).tiny), 1.0)
