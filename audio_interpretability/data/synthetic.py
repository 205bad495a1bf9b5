"""Synthetic ESC-50-format data set with ground truth, and a WHAM!-format noise folder.

Real ESC-50 and WHAM! cannot be downloaded here, so :func:`generate_synthetic_esc50` writes a
folder in ESC-50's exact layout (``audio/{fold}-{src_file}-{take}-{target}.wav`` and
``meta/esc50.csv``) whose classes are parametric sound events over pink/brown background
noise. The event and the background of each clip are also saved as stems
(``stems/<clip>_event.wav``, ``stems/<clip>_background.wav``; mixture = event + background),
so the time-frequency region that carries the class evidence is known:
:func:`ground_truth_mask` turns the stems into the mask of event-dominated STFT bins, against
which an interpretation can be scored.

Class table (up to 50 classes): class ``k`` has

* a type ``TYPES[(k + k // 10) % 5]``: harmonic tone, chirp (up on even bands, down on odd
  bands), band-limited noise burst, click train, AM (even bands) / FM (odd bands) tone;
* a band ``k % 10``: centre frequencies log-spaced over 150-4800 Hz, shifted by a per-type
  fraction of the band spacing so that no two classes share a centre frequency;
* a rhythm: 1, 2 or 3 pulses, ``(k + 2 * (k // 10)) % 3 + 1``.

Each clip draws its onset, pulse lengths, a small pitch jitter (+-2 %), the event level and
the background colour and level from a ``numpy`` Generator seeded by ``(seed, clip index)``.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile

import numpy as np
import soundfile as sf
import torch
from scipy.fft import next_fast_len
from scipy.signal import lfilter

from audio_interpretability.checkpointing import apply_umask

logger = logging.getLogger(__name__)

MAX_CLASSES = 50
N_FOLDS = 5
TYPES = ("harmonic", "chirp", "noise_burst", "click_train", "mod_tone")
BAND_STEP_OCT = 5.0 / 9.0
BAND_HZ = 150.0 * 2.0 ** (np.arange(10) * BAND_STEP_OCT)  # 150 .. 4800 Hz
F_MAX_HZ = 7500.0  # keep every event below 16 kHz Nyquist
OPTIONS_FILE = "synthetic_options.json"


# --------------------------------------------------------------------------------------------
# Class table
# --------------------------------------------------------------------------------------------
def class_params(target: int) -> dict:
    """Parameters of synthetic class ``target`` (0..49).

    Returns
    -------
    dict
        ``type``, ``variant`` (e.g. "up"/"down", "am"/"fm"), ``band``, ``freq`` (Hz),
        ``pulses`` (1..3), ``rate`` (click / modulation rate, Hz) and ``category`` (name).

    Example
    -------
    >>> p = class_params(1)
    >>> p["type"], p["variant"], round(p["freq"]), p["pulses"]
    ('chirp', 'down', 238, 2)
    """
    if not 0 <= target < MAX_CLASSES:
        raise ValueError(f"synthetic classes are 0..{MAX_CLASSES - 1}, got {target}")
    type_idx = (target + target // 10) % len(TYPES)
    band = target % 10
    kind = TYPES[type_idx]
    freq = float(BAND_HZ[band] * 2.0 ** (type_idx * BAND_STEP_OCT / len(TYPES)))
    variant = ""
    if kind == "chirp":
        variant = "up" if band % 2 == 0 else "down"
    elif kind == "mod_tone":
        variant = "am" if band % 2 == 0 else "fm"
    name = f"{kind}_{variant}" if variant else kind
    return {
        "type": kind,
        "variant": variant,
        "band": band,
        "freq": freq,
        "pulses": (target + 2 * (target // 10)) % 3 + 1,
        "rate": 8.0 + 3.0 * band,
        "category": f"{name}_{int(round(freq))}hz",
    }


# --------------------------------------------------------------------------------------------
# Signal generators (numpy, driven by an explicit Generator)
# --------------------------------------------------------------------------------------------
def _colored_noise(rng: np.random.Generator, n: int, sample_rate: int, alpha: float) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1 / f**alpha (pink: 1, brown: 2), no energy < 20 Hz."""
    m = next_fast_len(n, real=True)  # FFTs of awkward lengths are slow
    spectrum = np.fft.rfft(rng.standard_normal(m))
    freqs = np.fft.rfftfreq(m, 1.0 / sample_rate)
    weights = np.zeros_like(freqs)
    keep = freqs >= 20.0
    weights[keep] = freqs[keep] ** (-alpha / 2.0)
    noise = np.fft.irfft(spectrum * weights, m)[:n]
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def _envelope(n: int, sample_rate: int) -> np.ndarray:
    """Smooth attack (10 ms) / release (30 ms) envelope of length ``n``."""
    env = np.ones(n)
    attack = min(n // 2, max(1, int(0.01 * sample_rate)))
    release = min(n // 2, max(1, int(0.03 * sample_rate)))
    env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    env[n - release :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(release) / release)
    return env


def _pulse(params: dict, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One event pulse of ``n`` samples, peak 1."""
    t = np.arange(n) / sample_rate
    f0 = params["freq"] * (1.0 + rng.uniform(-0.02, 0.02))
    kind, variant = params["type"], params["variant"]
    if kind == "harmonic":
        x = sum(
            np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi)) / h
            for h in range(1, 5)
            if h * f0 < F_MAX_HZ
        )
    elif kind == "chirp":
        start, stop = (f0 / 1.2, 1.2 * f0) if variant == "up" else (1.2 * f0, f0 / 1.2)
        duration = max(n / sample_rate, 1e-6)
        k = np.log(stop / start) / duration
        phase = 2 * np.pi * start * np.expm1(k * t) / k  # exponential sweep
        x = np.sin(phase) + (0.3 * np.sin(2 * phase) if 2.4 * f0 < F_MAX_HZ else 0.0)
    elif kind == "noise_burst":
        m = next_fast_len(n, real=True)
        spectrum = np.fft.rfft(rng.standard_normal(m))
        freqs = np.fft.rfftfreq(m, 1.0 / sample_rate)
        band = (freqs >= f0 * 2 ** (-1 / 12)) & (freqs <= f0 * 2 ** (1 / 12))
        x = np.fft.irfft(spectrum * band, m)[:n]
    elif kind == "click_train":
        x = np.zeros(n)
        period = max(1, int(sample_rate / params["rate"]))
        click_len = min(n, int(0.04 * sample_rate))
        tc = np.arange(click_len) / sample_rate
        click = np.sin(2 * np.pi * f0 * tc) * np.exp(-tc / 0.008)
        for start in range(int(rng.integers(0, period // 4 + 1)), n, period):
            stop = min(n, start + click_len)
            x[start:stop] += click[: stop - start]
    else:  # mod_tone
        rate = params["rate"] / 2.0
        if variant == "am":
            x = np.sin(2 * np.pi * f0 * t) * (1.0 + 0.9 * np.sin(2 * np.pi * rate * t)) / 1.9
        else:
            depth = 0.06 * f0
            x = np.sin(2 * np.pi * f0 * t + depth / rate * np.sin(2 * np.pi * rate * t))
    x = np.asarray(x, dtype=np.float64) * _envelope(n, sample_rate)
    return x / max(float(np.abs(x).max()), 1e-12)


def synthesize_clip(
    target: int, duration: float, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Event and background waveforms of one clip of class ``target``.

    Arguments
    ---------
    target : int
        Class index (0..49), see :func:`class_params`.
    duration : float
        Clip length in seconds.
    sample_rate : int
        Sample rate (Hz).
    rng : numpy.random.Generator
        Source of all randomness of the clip.

    Returns
    -------
    tuple of numpy.ndarray
        (event (T,), background (T,)) float64; the clip is their sum.

    Example
    -------
    >>> event, background = synthesize_clip(3, 1.0, 16000, np.random.default_rng(0))
    >>> event.shape, background.shape
    ((16000,), (16000,))
    """
    params = class_params(target)
    n = int(round(duration * sample_rate))
    pulses = params["pulses"]
    if pulses == 1:
        lengths = [int(rng.uniform(0.3, 0.5) * n)]
        gaps = []
    else:
        lengths = [int(rng.uniform(0.12, 0.18) * n) for _ in range(pulses)]
        gaps = [int(rng.uniform(0.05, 0.1) * n) for _ in range(pulses - 1)]
    total = sum(lengths) + sum(gaps)
    onset = int(rng.integers(0, max(1, n - total)))
    level = rng.uniform(0.3, 0.7)
    event = np.zeros(n)
    position = onset
    for i, length in enumerate(lengths):
        length = max(length, 8)
        stop = min(n, position + length)
        event[position:stop] = level * _pulse(params, length, sample_rate, rng)[: stop - position]
        position = stop + (gaps[i] if i < len(gaps) else 0)
    background = _colored_noise(rng, n, sample_rate, alpha=rng.uniform(1.0, 1.6))
    background *= rng.uniform(0.015, 0.04)
    return event, background


def _babble(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Babble-like noise: several glottal pulse trains through formant resonators, syllable
    envelopes, plus broadband pink noise. Unit RMS."""
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    for _ in range(int(rng.integers(4, 7))):
        f0 = rng.uniform(90, 240) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t))
        phase = np.cumsum(f0 / sample_rate)
        source = np.diff(np.floor(phase), prepend=0.0)  # impulse at each glottal period
        voice = source
        for low, high in ((300, 900), (900, 2500), (2400, 3500)):
            freq, bw = rng.uniform(low, high), rng.uniform(80, 200)
            r = np.exp(-np.pi * bw / sample_rate)
            a = [1.0, -2 * r * np.cos(2 * np.pi * freq / sample_rate), r * r]
            voice = voice + lfilter([1.0 - r], a, source)
        rate = rng.uniform(3, 6)
        syllables = np.abs(np.sin(2 * np.pi * rate * t + rng.uniform(0, np.pi))) ** 1.5
        voice = voice * syllables
        out += voice / max(float(np.sqrt(np.mean(voice**2))), 1e-12)
    out = out / max(float(np.sqrt(np.mean(out**2))), 1e-12)
    out += 0.5 * _colored_noise(rng, n, sample_rate, alpha=1.0)
    return out / max(float(np.sqrt(np.mean(out**2))), 1e-12)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _write_wav(path: str, data: np.ndarray, sample_rate: int) -> None:
    """Write a 16-bit WAV atomically (temporary file, then ``os.replace``)."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".wav")
    os.close(fd)
    try:
        sf.write(tmp, data, sample_rate, subtype="PCM_16", format="WAV")
        apply_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_text(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    apply_umask(tmp)  # mkstemp creates 0600
    os.replace(tmp, path)


def generate_wham_noise(
    output_folder: str,
    n_files: tuple[int, int, int] = (6, 3, 3),
    sample_rate: int = 16000,
    min_duration: float = 2.0,
    max_duration: float = 6.0,
    seed: int = 0,
) -> None:
    """Write a WHAM!-format noise folder: ``output_folder/{tr,cv,tt}/*.wav``.

    Files are stereo, 16-bit, of random lengths in [min_duration, max_duration] s, and hold
    babble-like broadband noise (formant-filtered pulse trains with syllable envelopes plus
    pink noise), unlike the synthetic class events.

    Arguments
    ---------
    output_folder : str
        Folder that plays the role of ``wham_noise`` (created if needed).
    n_files : tuple of int
        Number of files in tr, cv, tt.
    sample_rate : int
        Sample rate (WHAM! uses 16 kHz).
    min_duration, max_duration : float
        Range of file lengths in seconds.
    seed : int
        Seed; the output is deterministic for a seed.

    Example
    -------
    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> generate_wham_noise(root, n_files=(2, 1, 1), min_duration=0.5, max_duration=1.0)
    >>> sorted(os.listdir(root)), len(os.listdir(os.path.join(root, "tr")))
    (['cv', 'tr', 'tt'], 2)
    """
    if not 0 < min_duration <= max_duration:
        raise ValueError(
            f"need 0 < min_duration <= max_duration, got {min_duration} and {max_duration}"
        )
    if len(n_files) != 3 or min(n_files) < 1:
        raise ValueError(f"n_files must give >= 1 file for each of tr, cv, tt, got {n_files}")
    index = 0
    for split, count in zip(("tr", "cv", "tt"), n_files):
        folder = os.path.join(output_folder, split)
        os.makedirs(folder, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, 1_000_000 + index])
            index += 1
            n = int(rng.uniform(min_duration, max_duration) * sample_rate)
            common = _babble(rng, n, sample_rate)
            delay = int(rng.integers(1, 20))
            left = common + 0.3 * _colored_noise(rng, n, sample_rate, 1.0)
            right = np.roll(common, delay) + 0.3 * _colored_noise(rng, n, sample_rate, 1.0)
            stereo = np.stack((left, right), axis=1)  # (T, 2)
            stereo *= rng.uniform(0.1, 0.3) / float(np.abs(stereo).max())
            _write_wav(os.path.join(folder, f"{split}_noise_{i:03d}.wav"), stereo, sample_rate)
    logger.info("Wrote WHAM!-format noise (%s files) to %s", n_files, output_folder)


def generate_synthetic_esc50(
    output_folder: str,
    n_classes: int = 10,
    clips_per_class_per_fold: int = 2,
    duration: float = 5.0,
    sample_rate: int = 44100,
    seed: int = 0,
    wham_folder: str | None = None,
) -> None:
    """Write a synthetic data set in ESC-50's layout, with event / background stems.

    Layout::

        output_folder/audio/{fold}-{src_file}-{take}-{target}.wav   (mono, 16-bit)
        output_folder/meta/esc50.csv   filename,fold,target,category,esc10,src_file,take
        output_folder/stems/{fold}-{src_file}-{take}-{target}_event.wav, ..._background.wav

    and, with ``wham_folder``, a WHAM!-format noise folder there (see
    :func:`generate_wham_noise`). Re-running with the same arguments skips the work.

    Arguments
    ---------
    output_folder : str
        Root of the data set (plays the role of ESC-50's root).
    n_classes : int
        Number of classes, 1..50 (see :func:`class_params`).
    clips_per_class_per_fold : int
        Clips of each class in each of the 5 folds.
    duration : float
        Clip length in seconds (ESC-50: 5).
    sample_rate : int
        Sample rate in Hz, >= 16000 (ESC-50: 44100).
    seed : int
        Seed; clip ``i`` uses ``numpy.random.default_rng([seed, i])``.
    wham_folder : str, optional
        Where to also write WHAM!-format noise.

    Example
    -------
    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> generate_synthetic_esc50(root, n_classes=3, clips_per_class_per_fold=1,
    ...                          duration=0.5, sample_rate=16000)
    >>> len(os.listdir(os.path.join(root, "audio"))), len(os.listdir(os.path.join(root, "stems")))
    (15, 30)
    """
    if not 1 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"n_classes must be in 1..{MAX_CLASSES}, got {n_classes}")
    if clips_per_class_per_fold < 1:
        raise ValueError(f"clips_per_class_per_fold must be >= 1, got {clips_per_class_per_fold}")
    if duration <= 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if sample_rate < 16000:
        raise ValueError(
            f"sample_rate must be >= 16000 Hz (events reach {F_MAX_HZ:.0f} Hz), got {sample_rate}"
        )
    options = {
        "n_classes": n_classes,
        "clips_per_class_per_fold": clips_per_class_per_fold,
        "duration": duration,
        "sample_rate": sample_rate,
        "seed": seed,
        "wham_folder": os.path.abspath(wham_folder) if wham_folder else None,
    }
    options_path = os.path.join(output_folder, OPTIONS_FILE)
    csv_path = os.path.join(output_folder, "meta", "esc50.csv")
    if os.path.isfile(options_path) and os.path.isfile(csv_path):
        with open(options_path, encoding="utf-8") as f:
            if json.load(f) == options:
                logger.info("Synthetic ESC-50 in %s is up to date; skipping", output_folder)
                return
    for sub in ("audio", "meta", "stems"):
        os.makedirs(os.path.join(output_folder, sub), exist_ok=True)

    takes_per_src = 2  # two takes (A, B) per source file, as in ESC-50
    srcs_per_cell = math.ceil(clips_per_class_per_fold / takes_per_src)
    rows = []
    for fold in range(1, N_FOLDS + 1):
        for target in range(n_classes):
            params = class_params(target)
            for j in range(clips_per_class_per_fold):
                clip_index = ((fold - 1) * n_classes + target) * clips_per_class_per_fold + j
                cell = (fold - 1) * n_classes + target
                src_file = str(100000 + cell * srcs_per_cell + j // takes_per_src)
                take = chr(ord("A") + j % takes_per_src)
                stem = f"{fold}-{src_file}-{take}-{target}"
                rng = np.random.default_rng([seed, clip_index])
                event, background = synthesize_clip(target, duration, sample_rate, rng)
                peak = float(np.abs(event + background).max())
                if peak > 0.99:  # keep the 16-bit mixture unclipped
                    event, background = event * 0.99 / peak, background * 0.99 / peak
                _write_wav(
                    os.path.join(output_folder, "audio", f"{stem}.wav"),
                    event + background,
                    sample_rate,
                )
                _write_wav(
                    os.path.join(output_folder, "stems", f"{stem}_event.wav"), event, sample_rate
                )
                _write_wav(
                    os.path.join(output_folder, "stems", f"{stem}_background.wav"),
                    background,
                    sample_rate,
                )
                rows.append(
                    [f"{stem}.wav", fold, target, params["category"], target < 10, src_file, take]
                )
    rows.sort(key=lambda r: r[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
    writer.writerows(rows)
    _write_text(csv_path, buffer.getvalue())
    if wham_folder:
        generate_wham_noise(
            wham_folder,
            sample_rate=16000,
            min_duration=max(0.5, 0.6 * duration),
            max_duration=max(1.0, 2.0 * duration),
            seed=seed,
        )
    _write_text(options_path, json.dumps(options, indent=2))
    logger.info(
        "Wrote %d synthetic clips (%d classes x %d per fold x %d folds) to %s",
        len(rows),
        n_classes,
        clips_per_class_per_fold,
        N_FOLDS,
        output_folder,
    )


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------
def ground_truth_mask(
    event: torch.Tensor,
    background: torch.Tensor,
    frontend: torch.nn.Module,
    threshold_db: float = 6.0,
    floor_db: float | None = -30.0,
) -> torch.Tensor:
    """Mask of the audible STFT bins where the event dominates the background.

    A bin is 1 when ``20 log10 |STFT(event)| > 20 log10 |STFT(background)| + threshold_db``
    and, unless ``floor_db`` is None, the event's magnitude there is within ``floor_db`` dB of
    the event's loudest bin. The defaults (a 6 dB margin over the background, a floor 30 dB
    under the event's peak) keep the event's main lobes and drop the Hann window's side lobes
    (-31 dB and lower) and onset splatter that a -60 dB floor let through wherever the
    background is quieter still (high above a low tone, under pink / brown noise).

    Arguments
    ---------
    event : torch.Tensor
        (B, T) or (T,) event stems at ``frontend.sample_rate``.
    background : torch.Tensor
        Same shape as ``event``.
    frontend : Frontend
        Any :class:`audio_interpretability.features.Frontend` (its STFT sets the grid).
    threshold_db : float
        How many dB the event must exceed the background by (default 6).
    floor_db : float or None
        Relative floor (dB, negative) under the event's maximum (default -30); None disables
        it.

    Returns
    -------
    torch.Tensor
        (B, frames, bins) float mask of 0 and 1.

    Example
    -------
    >>> from audio_interpretability.features import Frontend
    >>> t = torch.arange(16000) / 16000
    >>> event = torch.sin(2 * torch.pi * 1000 * t)
    >>> noise = 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    >>> mask = ground_truth_mask(event, noise, Frontend())
    >>> mask.shape, mask[0, 40, 64].item(), mask[0, 40, 300].item()  # 1 kHz = bin 64
    (torch.Size([1, 87, 513]), 1.0, 0.0)
    """
    if event.shape != background.shape:
        raise ValueError(
            f"event and background must have the same shape, got {tuple(event.shape)} and "
            f"{tuple(background.shape)}; load both stems of the same clip"
        )
    if event.dim() == 1:
        event, background = event.unsqueeze(0), background.unsqueeze(0)  # (1, T)
    if event.dim() != 2:
        raise ValueError(f"expected (B, T) or (T,) waveforms, got shape {tuple(event.shape)}")
    stft_event = frontend(event).stft  # (B, frames, bins, 2)
    stft_background = frontend(background).stft
    mag_event = stft_event.pow(2).sum(-1).sqrt()  # (B, frames, bins)
    mag_background = stft_background.pow(2).sum(-1).sqrt()
    mask = (mag_event > mag_background * 10.0 ** (threshold_db / 20.0)) & (mag_event > 0)
    if floor_db is not None:
        peak = mag_event.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
        mask &= mag_event >= peak * 10.0 ** (floor_db / 20.0)
    return mask.to(event.dtype)
