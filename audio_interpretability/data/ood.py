"""Out-of-domain (OOD) test conditions of L-MAC: clips contaminated with another sound.

The L-MAC paper (Paissan et al., ICML 2024) evaluates interpreters trained on ESC-50 on clips
contaminated with (i) another ESC-50 clip ("mixtures"), (ii) speech ("LJSpeech"), and (iii)
white noise ("white_noise"). Two protocols are implemented (``eval_protocol`` of eval.py):

**published** (:class:`ContaminatedDataset`, the released ``recipes/ESC50/interpret/eval.py``
of SpeechBrain): each clip of the *validation* fold is contaminated ``overlap_multiplier``
times (2), each time with another contaminating signal ``n``, by :func:`published_mixture`::

    mixture = w_s * s / ||s||_2 + w_n * n / ||n||_2,   then divided by its max (not abs-max)

    =============  ====================================================  =====  =====
    overlap_type   contaminating signal n                                w_s    w_n
    =============  ====================================================  =====  =====
    mixtures       a clip of the test fold                               0.8    0.2
    LJSpeech       an LJSpeech file (first 10000 of metadata.csv),       0.8    0.2
                   resampled, its first T samples (zero-padded at end)
    white_noise    Gaussian white noise                                  1.0    0.5
    =============  ====================================================  =====  =====

The contaminating clips / files of one clip are distinct (drawn without replacement, as
``random.sample`` does). The published code draws them with the global python ``random`` and
the white noise with the global torch RNG, one clip after the other as its loader reads them.
``contamination_draws: published`` (the default) replays that order from private generators
seeded by ``seed``, precomputed in clip order, so the selections are those of a sequential
published run whatever the batch size, workers or read order (the white noise cannot be
reproduced: :class:`ContaminatedDataset`); ``per_clip`` (ours) gives each clip its own
``torch.Generator`` seeded by ``(seed, clip index)`` (:func:`item_generator`). Two degenerate cases the published code turns into NaN or a sign flip are also
defined: a silent signal contributes nothing, and a mixture whose max is not positive is
divided by its absolute peak instead.

**ours** (:class:`OverlapDataset`, our former protocol): each clip of the *test* fold is
contaminated once, with peak-normalised signals::

    mixture = w_s * s / max|s| + w_n * n / max|n|,   then peak-normalised (max|mixture| = 1)

with the same weights; ``n`` is another test clip *of another class* (random crop), a random
crop of a random LJSpeech file, or white noise (:func:`overlap`).

In both, when the clip carries stems (synthetic data: ``event_sig`` and ``background_sig``),
they are rescaled like the clip and the contaminating signal joins the background, so the
ground-truth event mask stays exact.

LJSpeech is never downloaded: :class:`LJSpeechClips` reads an existing ``LJSpeech-1.1`` folder
(``metadata.csv`` + ``wavs/``; its parent or its ``wavs`` folder also work) and fails with an
error naming the fix when it holds no audio. :func:`generate_speech_like` writes "speech-like"
WAVs (formant-filtered glottal pulse trains with syllable envelopes), in the LJSpeech-1.1
layout if asked, for tests and for machines without LJSpeech.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import tempfile
from collections import OrderedDict

import numpy as np
import soundfile as sf
import torch
from scipy.signal import lfilter

from audio_interpretability.checkpointing import apply_umask
from audio_interpretability.data.audio import peak_scale, read_audio

logger = logging.getLogger(__name__)

#: Overlap types (the published names); "speech" is an alias of "LJSpeech".
OVERLAP_TYPES = ("mixtures", "LJSpeech", "white_noise")
OVERLAP_ALIASES = {"speech": "LJSpeech"}
#: (w_s, w_n) per overlap type, in both protocols (see the module docstring).
OVERLAP_WEIGHTS = {"mixtures": (0.8, 0.2), "LJSpeech": (0.8, 0.2), "white_noise": (1.0, 0.5)}
EVAL_PROTOCOLS = ("published", "ours")
#: LJSpeech files used as contamination: the first ones of metadata.csv (published: 10000).
LJSPEECH_N_FILES = 10000
_LJSPEECH_LAYOUT = "LJSpeech-1.1/metadata.csv + LJSpeech-1.1/wavs/<id>.wav"

__all__ = [
    "EVAL_PROTOCOLS",
    "LJSPEECH_N_FILES",
    "OVERLAP_TYPES",
    "OVERLAP_WEIGHTS",
    "CONTAMINATION_DRAWS",
    "ContaminatedDataset",
    "LJSpeechClips",
    "OverlapDataset",
    "check_eval_protocol",
    "check_overlap_type",
    "fit_length",
    "fit_start",
    "generate_speech_like",
    "item_generator",
    "ljspeech_files",
    "overlap",
    "overlap_types",
    "published_draws",
    "published_mixture",
    "resolve_ljspeech",
]


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------
def check_overlap_type(overlap_type: str) -> str:
    """The canonical name of ``overlap_type`` (case-insensitive, aliases), else a ValueError.

    Example
    -------
    >>> check_overlap_type("mixtures"), check_overlap_type("speech"), check_overlap_type("ljspeech")
    ('mixtures', 'LJSpeech', 'LJSpeech')
    """
    names = {name.lower(): name for name in OVERLAP_TYPES}
    names.update({alias.lower(): name for alias, name in OVERLAP_ALIASES.items()})
    canonical = names.get(str(overlap_type).lower())
    if canonical is None:
        raise ValueError(
            f"unknown overlap_type {overlap_type!r}; use one of {', '.join(OVERLAP_TYPES)} "
            "(speech = LJSpeech), all (every type), or none (the in-domain evaluation only)"
        )
    return canonical


def overlap_types(overlap_type: str | None) -> list[str]:
    """The overlap types asked for by ``overlap_type``: none, one type, or all.

    Example
    -------
    >>> overlap_types("none"), overlap_types("speech"), overlap_types("all")
    ([], ['LJSpeech'], ['mixtures', 'LJSpeech', 'white_noise'])
    """
    if overlap_type is None or str(overlap_type).lower() == "none":
        return []
    if str(overlap_type).lower() == "all":
        return list(OVERLAP_TYPES)
    return [check_overlap_type(overlap_type)]


def check_eval_protocol(eval_protocol: str) -> str:
    """Return ``eval_protocol`` if it is one of :data:`EVAL_PROTOCOLS`, else raise a ValueError.

    Example
    -------
    >>> check_eval_protocol("published")
    'published'
    """
    if eval_protocol not in EVAL_PROTOCOLS:
        raise ValueError(
            f"unknown eval_protocol {eval_protocol!r}; use published (validation fold, "
            "L2-normalised mixing, overlap_multiplier versions per clip) or ours (test fold, "
            "peak-normalised mixing, one version per clip)"
        )
    return eval_protocol


def item_generator(seed: int, index: int) -> torch.Generator:
    """The private ``torch.Generator`` of clip ``index`` (the global RNG is never touched).

    Example
    -------
    >>> a = torch.randn(2, generator=item_generator(1234, 7))
    >>> torch.equal(a, torch.randn(2, generator=item_generator(1234, 7)))
    True
    """
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))


# --------------------------------------------------------------------------------------------
# Mixing formulas
# --------------------------------------------------------------------------------------------
def _check_same_shape(s: torch.Tensor, n: torch.Tensor) -> None:
    if s.shape != n.shape:
        raise ValueError(
            f"clip and interfering signal must have the same shape, got {tuple(s.shape)} and "
            f"{tuple(n.shape)}; crop or pad the interfering signal with fit_length first"
        )


def overlap(s: torch.Tensor, n: torch.Tensor, w_s: float, w_n: float, return_parts: bool = False):
    """Our protocol: ``w_s s / max|s| + w_n n / max|n|``, then peak-normalise.

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
    # a silent clip keeps factor w_s (adds nothing)
    return _weighted_mix(s, n, w_s, w_n, peak_scale, peak_scale, return_parts)


def _weighted_mix(s, n, w_s, w_n, unit_scale, final_scale, return_parts):
    """``w_s s u(s) + w_n n u(n)``, times ``f`` of that sum; the formula of both protocols
    (``u``, ``f``: functions returning a (..., 1) factor of a (..., T) signal)."""
    _check_same_shape(s, n)
    gain = w_s * unit_scale(s)  # (..., 1)
    n_part = w_n * unit_scale(n) * n  # (..., T)
    scale = final_scale(gain * s + n_part)  # (..., 1)
    gain, n_part = gain * scale, n_part * scale
    mixture = gain * s + n_part
    if return_parts:
        return mixture, gain, n_part
    return mixture


def _l2_scale(x: torch.Tensor) -> torch.Tensor:
    """Factor (..., 1) dividing ``x`` (..., T) by its L2 norm: 1/||x||_2, or 1 for silence."""
    norm = x.pow(2).sum(dim=-1, keepdim=True).sqrt()  # (..., 1)
    return torch.where(norm > 0, 1.0 / norm.clamp_min(torch.finfo(x.dtype).tiny), 1.0)


def _max_scale(x: torch.Tensor) -> torch.Tensor:
    """Factor (..., 1) dividing ``x`` (..., T) by its max (published); by its absolute peak
    when the max is not positive (published: NaN or a sign flip), 1 for silence."""
    top = x.amax(dim=-1, keepdim=True)  # (..., 1)
    return torch.where(top > 0, 1.0 / top.clamp_min(torch.finfo(x.dtype).tiny), peak_scale(x))


def published_mixture(
    s: torch.Tensor,
    n: torch.Tensor,
    w_s: float = 0.8,
    w_n: float = 0.2,
    return_parts: bool = False,
):
    """Published protocol: ``w_s s / ||s||_2 + w_n n / ||n||_2``, divided by its max.

    With ``(w_s, w_n) = (0.8, 0.2)`` this is the published ``generate_mixture(s1, s2)``
    (mixtures and LJSpeech); with ``(1.0, 0.5)`` its white-noise formula
    ``smp = s / ||s||; noise / ||noise||; (smp + 0.5 noise) / max``. The max is the signed
    maximum, not the absolute peak (so the minimum may lie below -1), as published.

    Arguments
    ---------
    s : torch.Tensor
        (..., T) clips.
    n : torch.Tensor
        (..., T) contaminating signals (same shape).
    w_s, w_n : float
        Weights of the L2-normalised clip and contaminating signal.
    return_parts : bool
        Also return the factor applied to ``s`` and the contaminating part of the mixture.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        mixture (..., T), or (mixture, gain (..., 1), n_part (..., T)) with
        ``mixture == gain * s + n_part``.

    Example
    -------
    >>> s = torch.tensor([3.0, 0.0, -4.0])  # ||s|| = 5
    >>> n = torch.tensor([0.0, 2.0, 0.0])  # ||n|| = 2
    >>> published_mixture(s, n)  # [0.48, 0.2, -0.64] / 0.48
    tensor([ 1.0000,  0.4167, -1.3333])
    """
    return _weighted_mix(s, n, w_s, w_n, _l2_scale, _max_scale, return_parts)


def fit_length(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of ``length`` samples of a (T,) signal, or zero-pad it at the end (ours).

    Example
    -------
    >>> fit_length(torch.ones(3), 5, torch.Generator().manual_seed(0))
    tensor([1., 1., 1., 0., 0.])
    """
    if x.numel() >= length:
        start = int(torch.randint(x.numel() - length + 1, (1,), generator=generator))
        return x[start : start + length]
    return torch.nn.functional.pad(x, (0, length - x.numel()))


def fit_start(x: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` samples of a (T,) signal, zero-padded at the end (published).

    Example
    -------
    >>> fit_start(torch.arange(5.0), 3), fit_start(torch.ones(2), 4)
    (tensor([0., 1., 2.]), tensor([1., 1., 0., 0.]))
    """
    if x.numel() >= length:
        return x[:length]
    return torch.nn.functional.pad(x, (0, length - x.numel()))


# --------------------------------------------------------------------------------------------
# LJSpeech
# --------------------------------------------------------------------------------------------
def _is_ljspeech(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "metadata.csv")) and os.path.isdir(
        os.path.join(folder, "wavs")
    )


def resolve_ljspeech(ljspeech_path: str | None) -> str:
    """The ``LJSpeech-1.1`` folder (``metadata.csv`` + ``wavs/``) that ``ljspeech_path`` names.

    ``ljspeech_path`` may be that folder, its parent (as the published recipe's
    ``ljspeech_path``), or its ``wavs`` folder. Nothing is downloaded.

    Raises
    ------
    FileNotFoundError
        No such layout there; the message names the fix.

    Example
    -------
    >>> root = tempfile.mkdtemp()
    >>> _ = generate_speech_like(os.path.join(root, "LJSpeech-1.1"), n_files=1, duration=0.2,
    ...                          ljspeech_layout=True)
    >>> resolve_ljspeech(root) == resolve_ljspeech(os.path.join(root, "LJSpeech-1.1", "wavs"))
    True
    """
    fix = (
        f"pass --ljspeech_path with an existing LJSpeech-1.1 folder ({_LJSPEECH_LAYOUT}), its "
        "parent or its wavs folder; it is never downloaded: get it from "
        "https://keithito.com/LJ-Speech-Dataset/ (or write a stand-in with "
        "audio_interpretability.data.ood.generate_speech_like(folder, ljspeech_layout=True))"
    )
    if not ljspeech_path:
        raise FileNotFoundError(f"overlap_type LJSpeech needs LJSpeech: {fix}")
    path = os.path.abspath(str(ljspeech_path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"LJSpeech folder {ljspeech_path!r} does not exist; {fix}")
    candidates = [path, os.path.join(path, "LJSpeech-1.1")]
    if os.path.basename(path) == "wavs":
        candidates.append(os.path.dirname(path))
    for candidate in candidates:
        if _is_ljspeech(candidate):
            return candidate
    raise FileNotFoundError(
        f"{ljspeech_path!r} holds no LJSpeech (no metadata.csv next to a wavs folder there, in "
        f"its LJSpeech-1.1 subfolder or in its parent); {fix}"
    )


def ljspeech_files(ljspeech_path: str | None, max_files: int = LJSPEECH_N_FILES) -> list[str]:
    """The WAVs of the first ``max_files`` rows of LJSpeech's ``metadata.csv``, in its order.

    ``metadata.csv`` rows are ``<id>|<transcript>|<normalised transcript>`` (read as
    ``torchaudio.datasets.LJSPEECH`` reads them); the audio is ``wavs/<id>.wav``.

    Raises
    ------
    FileNotFoundError
        No LJSpeech layout, an empty ``metadata.csv``, or listed WAVs that are missing.
    """
    folder = resolve_ljspeech(ljspeech_path)
    with open(os.path.join(folder, "metadata.csv"), encoding="utf-8", newline="") as f:
        rows = [row for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE) if row]
    files = [os.path.join(folder, "wavs", row[0] + ".wav") for row in rows[: int(max_files)]]
    if not files:
        raise FileNotFoundError(
            f"{folder}/metadata.csv lists no file, so LJSpeech holds no audio; restore "
            f"LJSpeech-1.1 ({_LJSPEECH_LAYOUT}) and pass its folder as --ljspeech_path"
        )
    missing = [path for path in files if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(files)} WAVs listed in {folder}/metadata.csv are "
            f"missing (e.g. {missing[0]}); restore LJSpeech-1.1 ({_LJSPEECH_LAYOUT}) and pass "
            "its folder as --ljspeech_path"
        )
    return files


class LJSpeechClips:
    """LJSpeech files as contaminating signals: mono, resampled (22.05 -> 16 kHz), on demand.

    The file list is checked at construction (:func:`ljspeech_files`), so a missing or empty
    folder fails before any work. Recently loaded files are kept in memory.

    Arguments
    ---------
    ljspeech_path : str
        ``LJSpeech-1.1``, its parent or its ``wavs`` folder.
    sample_rate : int
        Output sample rate (Hz).
    max_files : int
        Only the first ``max_files`` rows of ``metadata.csv`` are used (published: 10000).
    cache_size : int
        Number of decoded files kept in memory.

    Example
    -------
    >>> folder = os.path.join(tempfile.mkdtemp(), "LJSpeech-1.1")
    >>> _ = generate_speech_like(folder, n_files=2, duration=1.0, ljspeech_layout=True)
    >>> clips = LJSpeechClips(folder, sample_rate=16000)
    >>> len(clips), clips.head(0, 20000).shape, clips.crop(8000, item_generator(0, 0)).shape
    (2, torch.Size([20000]), torch.Size([8000]))
    """

    def __init__(
        self,
        ljspeech_path: str | None,
        sample_rate: int = 16000,
        max_files: int = LJSPEECH_N_FILES,
        cache_size: int = 32,
    ):
        self.files = ljspeech_files(ljspeech_path, max_files)
        self.sample_rate = int(sample_rate)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        logger.info("LJSpeech: %d files from %s", len(self.files), os.path.dirname(self.files[0]))

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """File ``index``: (T,) mono waveform at ``sample_rate``."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        wav = read_audio(self.files[index], self.sample_rate)  # checked: named AudioError
        self._cache[index] = wav
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return wav

    def head(self, index: int, length: int) -> torch.Tensor:
        """Published: the first ``length`` samples of file ``index`` (zero-padded): (length,)."""
        return fit_start(self.load(index), length)

    def crop(self, length: int, generator: torch.Generator) -> torch.Tensor:
        """Ours: a random crop (random file, random offset) of ``length`` samples: (length,)."""
        index = int(torch.randint(len(self.files), (1,), generator=generator))
        return fit_length(self.load(index), length, generator)


# --------------------------------------------------------------------------------------------
# Contaminated datasets
# --------------------------------------------------------------------------------------------
def _read_sig(dataset, index: int) -> torch.Tensor:
    """``dataset[index]["sig"]``, without decoding the other keys of a DynamicItemDataset."""
    if hasattr(dataset, "output_keys_as"):
        with dataset.output_keys_as(["sig"]):
            return dataset[index]["sig"]
    return dataset[index]["sig"]


def _contaminated(item: dict, mixture, gain, n_part) -> dict:
    """``item`` with ``sig`` replaced by ``mixture = gain * sig + n_part`` (stems kept exact)."""
    item["sig"] = mixture
    if "event_sig" in item:
        item["event_sig"] = item["event_sig"] * gain
        item["background_sig"] = item["background_sig"] * gain + n_part
    return item


#: How :class:`ContaminatedDataset` draws: as the published sequential read, or per clip (ours).
CONTAMINATION_DRAWS = ("published", "per_clip")


def published_draws(n_clips: int, pool_size: int, multiplier: int, seed: int) -> list[list[int]]:
    """Pool indices of every clip as the published ``eval.py`` draws them, in clip order.

    Published ``ESCContaminated.__getitem__``: ``pool = [i for i in range(len(self.cont_d))]``,
    ``indices = random.sample(pool, self.overlap_multiplier)``, one call per clip, from python's
    global ``random``. Its ``random.seed(10)`` at import is overridden when the YAML is loaded
    (``__set_seed: !apply:speechbrain.utils.seed_everything [!ref <seed>]`` calls
    ``random.seed(seed)``) and nothing draws from python's ``random`` between that and the
    evaluation loader (batch size 1, no workers, clips in order): the selections are those of
    one ``random.Random(seed)`` consumed clip after clip.

    Returns
    -------
    list of list of int
        ``n_clips`` lists of ``multiplier`` distinct indices in ``range(pool_size)``.

    Example
    -------
    >>> published_draws(3, 10, 2, seed=1234)
    [[7, 1], [0, 1], [9, 0]]
    """
    rng = random.Random(int(seed))
    pool = list(range(pool_size))
    return [rng.sample(pool, multiplier) for _ in range(n_clips)]


def _check_contamination_draws(draws: str) -> str:
    if draws not in CONTAMINATION_DRAWS:
        raise ValueError(
            f"unknown contamination_draws {draws!r}; use published (the published eval.py's "
            "sequential draws, replayed from generators seeded by seed) or per_clip (each clip "
            "its own generator seeded by (seed, clip index))"
        )
    return draws


class ContaminatedDataset(torch.utils.data.Dataset):
    """Published protocol: every clip of ``dataset`` in ``multiplier`` contaminated versions.

    Item ``m * i + k`` is version ``k`` of clip ``i`` (id ``<clip id>_ov<k>``): the published
    ``ESCContaminated`` returned the ``m`` versions of a clip as one nested batch; here they
    are separate items, so any batch size works. The contaminating clips (``mixtures``) or
    LJSpeech files of clip ``i`` are ``m`` distinct draws from the pool. Mixing:
    :func:`published_mixture` with :data:`OVERLAP_WEIGHTS`. Batch it with
    ``collate_fn=speechbrain.dataio.batch.PaddedBatch``.

    Draws (``draws``, YAML ``contamination_draws``; docs/DIFFERENCES.md, E2):

    * ``"published"``: the published ``eval.py`` reads the clips in order (batch 1, no
      workers) and draws, for each clip, ``random.sample(pool, m)`` from python's global
      ``random`` and, for white noise, ``torch.randn(sample["sig"].shape)`` ``m`` times from
      torch's global RNG. Here the selections are :func:`published_draws` (one
      ``random.Random(seed)`` consumed in clip order: with the YAML's ``seed`` and the same
      clip and pool order, the indices of a published run, whose ``random.seed(10)`` at import
      is overridden by its YAML's ``seed_everything(seed)``), computed at construction. The
      white noise comes from one ``torch.Generator`` seeded by ``seed`` and consumed in the
      published order (clip after clip, ``m`` ``randn(T)`` calls each); its state before each
      clip is stored at construction (which reads every clip once for its length), so items
      can be read in any order. **Not reproduced**: the published white noise values, which
      come from torch's global RNG after the YAML's seeding *and* after everything that drew
      from it before the evaluation (model initialisation, ...): the same kind and order of
      draws, other values.
    * ``"per_clip"`` (ours): clip ``i`` draws its pool indices (``torch.randperm``) and its
      white noise from its own :func:`item_generator` ``(seed, i)``.

    Both are independent of batch size, workers and read order.

    Arguments
    ---------
    dataset : torch.utils.data.Dataset
        The clips to contaminate (published: the validation fold); items with "id", "sig",
        and optionally "event_sig" / "background_sig".
    overlap_type : str
        "mixtures", "LJSpeech" (alias "speech") or "white_noise".
    contamination : torch.utils.data.Dataset or LJSpeechClips, optional
        The pool: for "mixtures" a dataset with "sig" (published: the test fold), for
        "LJSpeech" an :class:`LJSpeechClips`; unused for "white_noise".
    multiplier : int
        Contaminated versions per clip (published ``overlap_multiplier``: 2).
    seed : int
        Seed of the generators (published: the YAML's ``seed``).
    draws : str
        ``"published"`` (default) or ``"per_clip"`` (ours), see above.

    Example
    -------
    >>> class Toy(torch.utils.data.Dataset):
    ...     def __len__(self):
    ...         return 3
    ...     def __getitem__(self, i):
    ...         return {"id": str(i), "sig": torch.ones(100) * (i + 1)}
    >>> noisy = ContaminatedDataset(Toy(), "white_noise", multiplier=2)
    >>> len(noisy), noisy[3]["id"], round(float(noisy[3]["sig"].max()), 4)
    (6, '1_ov1', 1.0)
    """

    def __init__(
        self,
        dataset,
        overlap_type: str,
        contamination=None,
        multiplier: int = 2,
        seed: int = 0,
        draws: str = "published",
    ):
        self.dataset = dataset
        self.overlap_type = check_overlap_type(overlap_type)
        self.weights = OVERLAP_WEIGHTS[self.overlap_type]
        self.multiplier = int(multiplier)
        self.seed = int(seed)
        self.contamination = contamination
        if self.multiplier < 1:
            raise ValueError(f"overlap_multiplier must be >= 1, got {multiplier}")
        if self.overlap_type == "LJSpeech" and not isinstance(contamination, LJSpeechClips):
            raise ValueError("overlap_type LJSpeech needs contamination=LJSpeechClips(...)")
        if self.overlap_type == "mixtures" and contamination is None:
            raise ValueError("overlap_type mixtures needs contamination=<the test set>")
        if self.overlap_type != "white_noise" and len(contamination) < self.multiplier:
            raise ValueError(
                f"overlap_type {self.overlap_type} draws {self.multiplier} distinct "
                f"contaminating signals per clip but the pool has {len(contamination)}; use "
                "more test folds / LJSpeech files, or a smaller --overlap_multiplier"
            )
        self.draws = _check_contamination_draws(draws)
        self._pool_indices: list[list[int]] = []  # published: (clips, multiplier)
        self._noise_states: list[tuple[torch.Tensor, int]] = []  # published: (state, T) per clip
        if self.draws == "published" and self.overlap_type == "white_noise":
            self._noise_states = self._published_noise_states()
        elif self.draws == "published":
            self._pool_indices = published_draws(
                len(self.dataset), len(contamination), self.multiplier, self.seed
            )

    def _published_noise_states(self) -> list[tuple[torch.Tensor, int]]:
        """One generator seeded by ``seed``, advanced as the published loop draws (clip after
        clip, ``multiplier`` ``randn(T)`` calls each): its state before each clip, and T."""
        generator = torch.Generator().manual_seed(self.seed)
        states = []
        for clip in range(len(self.dataset)):
            length = _read_sig(self.dataset, clip).numel()
            states.append((generator.get_state(), length))
            for _ in range(self.multiplier):
                torch.randn(length, generator=generator)
        return states

    def __len__(self) -> int:
        return len(self.dataset) * self.multiplier

    def contaminating_signal(self, index: int, version: int, length: int) -> torch.Tensor:
        """The (length,) contaminating signal of version ``version`` of clip ``index``."""
        if self.draws == "published":
            return self._published_signal(index, version, length)
        generator = item_generator(self.seed, index)
        if self.overlap_type == "white_noise":
            noises = torch.randn(version + 1, length, generator=generator)  # (version + 1, T)
            return noises[version]
        pool = torch.randperm(len(self.contamination), generator=generator)
        j = int(pool[version])  # distinct per version, as random.sample(pool, multiplier)
        if self.overlap_type == "LJSpeech":
            return self.contamination.head(j, length)
        return fit_start(_read_sig(self.contamination, j), length)

    def _published_signal(self, index: int, version: int, length: int) -> torch.Tensor:
        """``contaminating_signal`` of the published draws (see the class docstring)."""
        if self.overlap_type == "white_noise":
            state, drawn_length = self._noise_states[index]
            if drawn_length != length:
                raise ValueError(
                    f"clip {index} has {length} samples but had {drawn_length} when the "
                    "dataset was contaminated; build the ContaminatedDataset on the data it reads"
                )
            generator = torch.Generator()
            generator.set_state(state)
            for _ in range(version):  # the versions before this one (published: one randn each)
                torch.randn(length, generator=generator)
            return torch.randn(length, generator=generator)
        j = self._pool_indices[index][version]
        if self.overlap_type == "LJSpeech":
            return self.contamination.head(j, length)
        return fit_start(_read_sig(self.contamination, j), length)

    def __getitem__(self, index: int) -> dict:
        clip, version = divmod(index, self.multiplier)
        item = dict(self.dataset[clip])
        sig = item["sig"]  # (T,)
        n = self.contaminating_signal(clip, version, sig.numel()).to(sig.dtype)
        item = _contaminated(item, *published_mixture(sig, n, *self.weights, return_parts=True))
        item["id"] = f"{item['id']}_ov{version}"
        return item


class OverlapDataset(torch.utils.data.Dataset):
    """Our protocol: every clip of a test set overlapped once with an interfering signal.

    Items are those of ``dataset`` (same ids) with ``"sig"`` replaced by the overlapped clip
    (:func:`overlap`, peak-normalised signals; and, when present, ``"event_sig"`` /
    ``"background_sig"`` rescaled, the interfering signal added to the background). Batch it
    with ``collate_fn=speechbrain.dataio.batch.PaddedBatch``.

    Arguments
    ---------
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        The test set (items with "id", "sig", "class_string", ...).
    overlap_type : str
        "mixtures" (another clip of the set, of another class, random crop), "LJSpeech"
        (alias "speech": a random crop of a random file) or "white_noise".
    seed : int
        Seed of the per-item generators (item ``i`` uses :func:`item_generator` ``(seed, i)``).
    speech : LJSpeechClips, optional
        The speech files; required for "LJSpeech".

    Example
    -------
    >>> class Toy(torch.utils.data.Dataset):
    ...     def __len__(self):
    ...         return 2
    ...     def __getitem__(self, i):
    ...         return {"id": str(i), "sig": torch.ones(100) * (i + 1)}
    >>> item = OverlapDataset(Toy(), "white_noise")[0]
    >>> item["sig"].shape, float(item["sig"].abs().max())
    (torch.Size([100]), 1.0)
    """

    def __init__(
        self,
        dataset,
        overlap_type: str,
        seed: int = 0,
        speech: LJSpeechClips | None = None,
    ):
        self.dataset = dataset
        self.overlap_type = check_overlap_type(overlap_type)
        self.weights = OVERLAP_WEIGHTS[self.overlap_type]
        self.seed = int(seed)
        self.speech = speech
        if self.overlap_type == "LJSpeech" and not isinstance(speech, LJSpeechClips):
            raise ValueError("overlap_type LJSpeech needs speech=LJSpeechClips(...)")
        if self.overlap_type == "mixtures" and len(dataset) < 2:
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
        return fit_length(_read_sig(self.dataset, j), length, generator)

    def interfering_signal(self, index: int, length: int) -> torch.Tensor:
        """The (length,) interfering signal of item ``index`` (deterministic per index)."""
        generator = item_generator(self.seed, index)
        if self.overlap_type == "mixtures":
            return self._other_clip(index, length, generator)
        if self.overlap_type == "white_noise":
            return torch.randn(length, generator=generator)
        return self.speech.crop(length, generator)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        sig = item["sig"]  # (T,)
        n = self.interfering_signal(index, sig.numel()).to(sig.dtype)
        return _contaminated(item, *overlap(sig, n, *self.weights, return_parts=True))


# --------------------------------------------------------------------------------------------
# Speech-like stand-in for LJSpeech
# --------------------------------------------------------------------------------------------
def _write_atomic_wav(path: str, data: np.ndarray, sample_rate: int) -> None:
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".speech_", suffix=".wav")
    os.close(fd)
    try:
        sf.write(tmp, data.astype(np.float32), sample_rate, subtype="PCM_16")
        apply_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def generate_speech_like(
    output_folder: str,
    n_files: int = 4,
    duration: float = 3.0,
    sample_rate: int = 22050,
    seed: int = 0,
    ljspeech_layout: bool = False,
) -> list[str]:
    """Write a few "speech-like" mono WAVs: formant-filtered glottal pulse trains.

    Each file is a sequence of syllables (150-350 ms, raised-cosine envelopes, short pauses)
    with a gliding pitch (90-220 Hz) whose pulse train goes through three resonators at
    vowel formants drawn per syllable (F1 300-800 Hz, F2 900-2300 Hz, F3 2400-3200 Hz), plus
    a little breath noise. A stand-in for LJSpeech (22.05 kHz) where it is not available.

    Arguments
    ---------
    output_folder : str
        Destination folder (created if needed).
    n_files : int
        Number of files.
    duration : float
        Length of each file in seconds.
    sample_rate : int
        Sample rate (Hz).
    seed : int
        Seed; the output is deterministic for a seed.
    ljspeech_layout : bool
        False: files ``<output_folder>/speech_XXX.wav``. True: ``output_folder`` is written as
        an ``LJSpeech-1.1`` folder: ``wavs/LJ001-0001.wav``, ... and ``metadata.csv``
        (``LJ001-0001|<text>|<text>`` per file), readable by :class:`LJSpeechClips`.

    Returns
    -------
    list of str
        The written WAV paths.

    Example
    -------
    >>> paths = generate_speech_like(tempfile.mkdtemp(), n_files=1, duration=0.5)
    >>> sf.info(paths[0]).samplerate, round(sf.info(paths[0]).duration, 2)
    (22050, 0.5)
    >>> root = tempfile.mkdtemp()
    >>> paths = generate_speech_like(root, n_files=2, duration=0.5, ljspeech_layout=True)
    >>> os.path.relpath(paths[1], root), open(os.path.join(root, "metadata.csv")).readline()
    ('wavs/LJ001-0002.wav', 'LJ001-0001|speech-like file 1|speech-like file one\\n')
    """
    if n_files < 1 or duration <= 0 or sample_rate < 8000:
        raise ValueError(
            f"need n_files >= 1, duration > 0 and sample_rate >= 8000, got {n_files}, "
            f"{duration}, {sample_rate}"
        )
    wav_folder = os.path.join(output_folder, "wavs") if ljspeech_layout else output_folder
    os.makedirs(wav_folder, exist_ok=True)
    paths, rows = [], []
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
        name = f"LJ001-{k + 1:04d}" if ljspeech_layout else f"speech_{k:03d}"
        path = os.path.join(wav_folder, name + ".wav")
        _write_atomic_wav(path, out, sample_rate)
        paths.append(path)
        rows.append(f"{name}|speech-like file {k + 1}|speech-like file {_spell(k + 1)}\n")
    if ljspeech_layout:
        fd, tmp = tempfile.mkstemp(dir=output_folder, prefix=".metadata_", suffix=".csv")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(rows)
        apply_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, os.path.join(output_folder, "metadata.csv"))
    logger.info("Wrote %d speech-like files to %s", n_files, output_folder)
    return paths


def _spell(k: int) -> str:
    """``k`` in words for the normalised transcript (digits above twenty)."""
    words = (
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
    ).split()
    return words[k] if k < len(words) else str(k)


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
