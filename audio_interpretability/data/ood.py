"""Out-of-domain (OOD) test conditions of L-MAC: clips overlapped with another sound.

The L-MAC paper (Paissan et al., ICML 2024) evaluates interpreters trained on ESC-50 on test
clips overlapped with (i) another ESC-50 test clip ("mixtures"), (ii) white noise
("white_noise"), and (iii) speech ("speech", LJSpeech in the paper). Every condition is one
formula applied to the peak-normalised clip ``s`` and the interfering signal ``n``::

    mixture = w_s * s / max|s| + w_n * n / max|n|,   then peak-normalised (max|mixture| = 1)

    =============  ===============================  =====  =====
    overlap_type   interfering signal n             w_s    w_n
    =============  ===============================  =====  =====
    mixtures       another test clip (other class)  0.8    0.2
    white_noise    Gaussian white noise             1.0    0.5
    speech         a random crop of a speech WAV    0.8    0.2
    =============  ===============================  =====  =====

A silent signal contributes nothing (no division by zero). When the clip carries stems
(synthetic data: ``event_sig`` and ``background_sig``), they are rescaled with the clip, and the
interfering signal joins the background, so the ground-truth event mask stays exact.

:class:`OverlapDataset` wraps a test ``DynamicItemDataset``; each item draws its interfering
signal from a ``torch.Generator`` seeded by ``(seed, index)``, so the condition is the same in
every run, for any batch size, worker count or order. :func:`generate_speech_like` writes a
few "speech-like" WAVs (formant-filtered glottal pulse trains with syllable envelopes) for
tests and for machines without LJSpeech.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import glob
import logging
import math
import os
import tempfile

import numpy as np
import soundfile as sf
import torch
from scipy.signal import lfilter

from audio_interpretability.data.esc50 import load_audio, peak_scale

logger = logging.getLogger(__name__)

OVERLAP_TYPES = ("mixtures", "white_noise", "speech")
#: (w_s, w_n) per overlap type, see the module docstring.
OVERLAP_WEIGHTS = {"mixtures": (0.8, 0.2), "white_noise": (1.0, 0.5), "speech": (0.8, 0.2)}
SPEECH_EXTENSIONS = (".wav", ".flac")

__all__ = [
    "OVERLAP_TYPES",
    "OVERLAP_WEIGHTS",
    "OverlapDataset",
    "SpeechClips",
    "check_overlap_type",
    "fit_length",
    "generate_speech_like",
    "overlap",
]


def check_overlap_type(overlap_type: str) -> str:
    """Return ``overlap_type`` if it is one of :data:`OVERLAP_TYPES`, else raise a ValueError.

    Example
    -------
    >>> check_overlap_type("mixtures")
    'mixtures'
    """
    if overlap_type not in OVERLAP_TYPES:
        raise ValueError(
            f"unknown overlap_type {overlap_type!r}; use one of {', '.join(OVERLAP_TYPES)} "
            "(or none for the in-domain evaluation only)"
        )
    return overlap_type


def overlap(s: torch.Tensor, n: torch.Tensor, w_s: float, w_n: float, return_parts: bool = False):
    """Overlap ``s`` with ``n``: ``w_s s / max|s| + w_n n / max|n|``, then peak-normalise.

    Arguments
    ---------
    s : torch.Tensor
        (..., T) clips.
    n : torch.Tensor
        (..., T) interfering signals (same shape).
    w_s, w_n : float
        Weights of the peak-normalised clip and interfering signal.
    return_parts : bool
        Also return the factor applied to ``s`` and the interfering part of the mixture.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        mixture (..., T), or (mixture, gain (..., 1), n_part (..., T)) with
        ``mixture == gain * s + n_part``.

    Example
    -------
    >>> s = torch.tensor([0.0, 2.0, -1.0])
    >>> n = torch.tensor([1.0, 0.0, 0.0])
    >>> overlap(s, n, 0.8, 0.2)  # [0.2, 0.8, -0.4] / 0.8
    tensor([ 0.2500,  1.0000, -0.5000])
    """
    if s.shape != n.shape:
        raise ValueError(
            f"clip and interfering signal must have the same shape, got {tuple(s.shape)} and "
            f"{tuple(n.shape)}; crop or pad the interfering signal with fit_length first"
        )
    gain = w_s * peak_scale(s)  # (..., 1); a silent clip keeps factor w_s (adds nothing)
    n_part = w_n * peak_scale(n) * n
    mixture = gain * s + n_part
    scale = peak_scale(mixture)  # (..., 1)
    gain, n_part = gain * scale, n_part * scale
    mixture = gain * s + n_part
    if return_parts:
        return mixture, gain, n_part
    return mixture


def fit_length(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of ``length`` samples of a (T,) signal, or zero-pad it at the end.

    Example
    -------
    >>> fit_length(torch.ones(3), 5, torch.Generator().manual_seed(0))
    tensor([1., 1., 1., 0., 0.])
    """
    if x.numel() >= length:
        start = int(torch.randint(x.numel() - length + 1, (1,), generator=generator))
        return x[start : start + length]
    return torch.nn.functional.pad(x, (0, length - x.numel()))


class SpeechClips:
    """Random crops of the speech files of a folder (LJSpeech in the paper), seeded.

    Files (``*.wav`` / ``*.flac``, searched recursively) may have any sample rate and channel
    count: they are downmixed to mono and resampled on load (and kept in memory).

    Arguments
    ---------
    speech_folder : str
        Folder of speech files, e.g. ``LJSpeech-1.1/wavs``.
    sample_rate : int
        Output sample rate (Hz).

    Example
    -------
    >>> folder = tempfile.mkdtemp()
    >>> paths = generate_speech_like(folder, n_files=2, duration=1.0, sample_rate=22050)
    >>> clips = SpeechClips(folder, sample_rate=16000)
    >>> len(clips), clips.crop(8000, torch.Generator().manual_seed(0)).shape
    (2, torch.Size([8000]))
    """

    def __init__(self, speech_folder: str | None, sample_rate: int = 16000):
        if not speech_folder or not os.path.isdir(speech_folder):
            raise FileNotFoundError(
                f"speech folder {speech_folder!r} does not exist; pass --speech_folder with a "
                "folder of speech WAV/FLAC files (the paper used LJSpeech-1.1/wavs)"
            )
        self.files = sorted(
            path
            for ext in SPEECH_EXTENSIONS
            for path in glob.glob(os.path.join(speech_folder, "**", f"*{ext}"), recursive=True)
        )
        if not self.files:
            raise FileNotFoundError(
                f"no .wav or .flac file under {speech_folder}; pass --speech_folder with a "
                "folder of speech recordings (the paper used LJSpeech-1.1/wavs)"
            )
        self.sample_rate = sample_rate
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.files)

    def crop(self, length: int, generator: torch.Generator) -> torch.Tensor:
        """A random crop (random file, random offset) of ``length`` samples: (length,)."""
        index = int(torch.randint(len(self.files), (1,), generator=generator))
        if index not in self._cache:
            self._cache[index] = load_audio(self.files[index], self.sample_rate)
        return fit_length(self._cache[index], length, generator)


class OverlapDataset(torch.utils.data.Dataset):
    """A test set whose clips are overlapped with an interfering signal (an OOD condition).

    Items are those of ``dataset`` with ``"sig"`` replaced by the overlapped clip (and, when
    present, ``"event_sig"`` / ``"background_sig"`` rescaled, the interfering signal added to
    the background). Batch it with ``collate_fn=speechbrain.dataio.batch.PaddedBatch``.

    Arguments
    ---------
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        The test set (items with "id", "sig", "class_string", ...).
    overlap_type : str
        "mixtures", "white_noise" or "speech".
    sample_rate : int
        Sample rate of ``dataset``'s waveforms (Hz), for the speech files.
    seed : int
        Seed of the per-item generators (item ``i`` uses ``(seed, i)``).
    speech_folder : str, optional
        Folder of speech files; required for "speech".

    Example
    -------
    >>> class Toy(torch.utils.data.Dataset):
    ...     def __len__(self):
    ...         return 2
    ...     def __getitem__(self, i):
    ...         return {"id": str(i), "sig": torch.ones(100) * (i + 1)}
    >>> item = OverlapDataset(Toy(), "white_noise", 16000)[0]
    >>> item["sig"].shape, float(item["sig"].abs().max())
    (torch.Size([100]), 1.0)
    """

    def __init__(
        self,
        dataset,
        overlap_type: str,
        sample_rate: int,
        seed: int = 0,
        speech_folder: str | None = None,
    ):
        self.dataset = dataset
        self.overlap_type = check_overlap_type(overlap_type)
        self.weights = OVERLAP_WEIGHTS[overlap_type]
        self.seed = int(seed)
        self.speech = SpeechClips(speech_folder, sample_rate) if overlap_type == "speech" else None
        if overlap_type == "mixtures" and len(dataset) < 2:
            raise ValueError(
                "overlap_type mixtures needs a test set of at least 2 clips (each clip is "
                "mixed with another one); use more test folds or another overlap_type"
            )
        self._classes = self._class_of_items()

    def _class_of_items(self) -> list | None:
        """Class string of every item from the manifest (no audio decoding), when known."""
        data = getattr(self.dataset, "data", None)
        ids = getattr(self.dataset, "data_ids", None)
        if data is None or ids is None:
            return None
        return [data[i].get("class_string") for i in ids]

    def __len__(self) -> int:
        return len(self.dataset)

    def _other_clip(self, index: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """Another test clip, of another class when the set has one, fitted to ``length``."""
        candidates = [j for j in range(len(self.dataset)) if j != index]
        if self._classes is not None:
            other_class = [j for j in candidates if self._classes[j] != self._classes[index]]
            candidates = other_class or candidates
        j = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
        if hasattr(self.dataset, "output_keys_as"):
            with self.dataset.output_keys_as(["sig"]):
                sig = self.dataset[j]["sig"]
        else:
            sig = self.dataset[j]["sig"]
        return fit_length(sig, length, generator)

    def interfering_signal(self, index: int, length: int) -> torch.Tensor:
        """The (length,) interfering signal of item ``index`` (deterministic per index)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        if self.overlap_type == "mixtures":
            return self._other_clip(index, length, generator)
        if self.overlap_type == "white_noise":
            return torch.randn(length, generator=generator)
        return self.speech.crop(length, generator)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        sig = item["sig"]  # (T,)
        n = self.interfering_signal(index, sig.numel()).to(sig.dtype)
        mixture, gain, n_part = overlap(sig, n, *self.weights, return_parts=True)
        item["sig"] = mixture
        if "event_sig" in item:
            item["event_sig"] = item["event_sig"] * gain
            item["background_sig"] = item["background_sig"] * gain + n_part
        return item


def generate_speech_like(
    output_folder: str,
    n_files: int = 4,
    duration: float = 3.0,
    sample_rate: int = 22050,
    seed: int = 0,
) -> list[str]:
    """Write a few "speech-like" mono WAVs: formant-filtered glottal pulse trains.

    Each file is a sequence of syllables (150-350 ms, raised-cosine envelopes, short pauses)
    with a gliding pitch (90-220 Hz) whose pulse train goes through three resonators at
    vowel formants drawn per syllable (F1 300-800 Hz, F2 900-2300 Hz, F3 2400-3200 Hz), plus
    a little breath noise. A stand-in for LJSpeech (22.05 kHz) where it is not available.

    Arguments
    ---------
    output_folder : str
        Destination folder (created if needed); files ``speech_XXX.wav``.
    n_files : int
        Number of files.
    duration : float
        Length of each file in seconds.
    sample_rate : int
        Sample rate (Hz).
    seed : int
        Seed; the output is deterministic for a seed.

    Returns
    -------
    list of str
        The written paths.

    Example
    -------
    >>> paths = generate_speech_like(tempfile.mkdtemp(), n_files=1, duration=0.5)
    >>> sf.info(paths[0]).samplerate, round(sf.info(paths[0]).duration, 2)
    (22050, 0.5)
    """
    if n_files < 1 or duration <= 0 or sample_rate < 8000:
        raise ValueError(
            f"need n_files >= 1, duration > 0 and sample_rate >= 8000, got {n_files}, "
            f"{duration}, {sample_rate}"
        )
    os.makedirs(output_folder, exist_ok=True)
    paths = []
    n = int(round(duration * sample_rate))
    for k in range(n_files):
        rng = np.random.default_rng([seed, k])
        out = np.zeros(n)
        pos = int(rng.integers(0, int(0.1 * sample_rate)))
        while pos < n:
            length = int(rng.uniform(0.15, 0.35) * sample_rate)
            seg = _syllable(rng, min(length, n - pos), sample_rate)
            out[pos : pos + seg.size] += seg
            pos += length + int(rng.uniform(0.03, 0.15) * sample_rate)
        out *= 0.9 / max(float(np.abs(out).max()), 1e-9)
        path = os.path.join(output_folder, f"speech_{k:03d}.wav")
        fd, tmp = tempfile.mkstemp(dir=output_folder, prefix=".speech_", suffix=".wav")
        os.close(fd)
        try:
            sf.write(tmp, out.astype(np.float32), sample_rate, subtype="PCM_16")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        paths.append(path)
    logger.info("Wrote %d speech-like files to %s", n_files, output_folder)
    return paths


def _syllable(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """One voiced syllable of ``n`` samples: pulse train -> 3 formant resonators -> envelope."""
    f0 = np.linspace(rng.uniform(90, 220), rng.uniform(90, 220), n)  # (n,) gliding pitch
    phase = np.cumsum(f0 / sample_rate)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # 1 at each glottal period
    x = pulses + 0.02 * rng.standard_normal(n)
    y = np.zeros(n)
    for lo, hi, bandwidth in ((300, 800, 80), (900, 2300, 120), (2400, 3200, 200)):
        f = rng.uniform(lo, hi)
        r = math.exp(-math.pi * bandwidth / sample_rate)
        theta = 2 * math.pi * f / sample_rate
        y += lfilter([1 - r], [1, -2 * r * math.cos(theta), r * r], x)
    envelope = np.sin(np.pi * np.arange(n) / max(n - 1, 1)) ** 2
    return y * envelope
