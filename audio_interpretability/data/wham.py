"""WHAM! noise: random crops of the noise recordings, mixed into clean audio at a chosen SNR.

The real WHAM! noise layout is ``wham_noise/{tr,cv,tt}/*.wav`` (2-channel, 16 kHz, varying
lengths). :class:`WhamNoise` accepts the ``wham_noise`` folder itself or its parent, downmixes
to mono, resamples when needed, draws random files and random crops with its own seeded
``torch.Generator`` (successive batches get different noise, the whole sequence is
reproducible), and zero-pads files shorter than the requested length. :func:`mix_at_snr` mixes
with energy normalisation and then peak-normalises the mixture.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import glob
import logging
import math
import os

import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from audio_interpretability.data.audio import (
    audio_info,
    peak_scale,
    read_audio,
    read_audio_segment,
)

logger = logging.getLogger(__name__)

WHAM_SPLITS = ("tr", "cv", "tt")
_LAYOUT = "wham_noise/{tr,cv,tt}/*.wav"


def resolve_wham_folder(wham_folder: str) -> str:
    """Return the folder holding ``tr/``, ``cv/``, ``tt/``: ``wham_folder`` or its ``wham_noise``.

    Raises
    ------
    FileNotFoundError
        When neither ``wham_folder`` nor ``wham_folder/wham_noise`` has split subfolders.

    Example
    -------
    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "wham_noise", "tr"))
    >>> resolve_wham_folder(root) == os.path.join(root, "wham_noise")
    True
    """
    if not os.path.isdir(wham_folder):
        raise FileNotFoundError(
            f"WHAM! folder {wham_folder!r} does not exist; set wham_folder to the wham_noise "
            f"folder (layout {_LAYOUT}) or to its parent"
        )
    for candidate in (wham_folder, os.path.join(wham_folder, "wham_noise")):
        if any(os.path.isdir(os.path.join(candidate, s)) for s in WHAM_SPLITS):
            return candidate
    raise FileNotFoundError(
        f"{wham_folder!r} has no tr/, cv/ or tt/ subfolder (nor wham_noise/ with them); "
        f"WHAM! noise must be laid out as {_LAYOUT}: point wham_folder at wham_noise or its parent"
    )


def check_wham_args(add_wham_noise: bool, wham_folder: str | None) -> str | None:
    """Check the WHAM! hyperparameters; return the resolved folder (or None when unused).

    Raises
    ------
    ValueError
        ``add_wham_noise`` is True but no ``wham_folder`` is given.
    FileNotFoundError
        ``wham_folder`` does not have the WHAM! layout.

    Example
    -------
    >>> check_wham_args(False, None) is None
    True
    >>> check_wham_args(True, None)
    Traceback (most recent call last):
      ...
    ValueError: add_wham_noise is True but wham_folder is not set; pass --wham_folder /path/to/wham_noise (or set add_wham_noise: False)
    """
    if not add_wham_noise:
        return None
    if not wham_folder:
        raise ValueError(
            "add_wham_noise is True but wham_folder is not set; pass --wham_folder "
            "/path/to/wham_noise (or set add_wham_noise: False)"
        )
    return resolve_wham_folder(wham_folder)


@register_checkpoint_hooks
class WhamNoise:
    """Random mono noise crops from one WHAM! split.

    A checkpointer recoverable: its generator state is saved and recovered, so that a resumed
    run draws the crops an uninterrupted run would have drawn.

    Arguments
    ---------
    wham_folder : str
        The ``wham_noise`` folder or its parent.
    sample_rate : int
        Output sample rate (Hz); files are resampled when theirs differs.
    split : str
        "tr", "cv" or "tt".
    seed : int
        Seed of the private ``torch.Generator`` (the global RNG is never touched).
    max_cache_mb : float
        Decoded files are kept in memory when the whole split fits in this many MiB of
        float32; otherwise each crop is read from disk (only the needed frames).

    Example
    -------
    >>> import os, tempfile
    >>> from audio_interpretability.data.synthetic import generate_wham_noise
    >>> root = tempfile.mkdtemp()
    >>> generate_wham_noise(root, n_files=(2, 1, 1), min_duration=0.5, max_duration=1.0)
    >>> noise = WhamNoise(root, sample_rate=8000, split="tr", seed=0)
    >>> noise.sample(3, 4000).shape
    torch.Size([3, 4000])
    """

    def __init__(
        self,
        wham_folder: str,
        sample_rate: int = 16000,
        split: str = "tr",
        seed: int = 0,
        max_cache_mb: float = 512.0,
    ):
        if split not in WHAM_SPLITS:
            raise ValueError(f"split must be one of {WHAM_SPLITS}, got {split!r}")
        self.folder = os.path.join(resolve_wham_folder(wham_folder), split)
        self.files = sorted(glob.glob(os.path.join(self.folder, "*.wav")))
        if not self.files:
            raise FileNotFoundError(
                f"no .wav file in {self.folder}; WHAM! noise must be laid out as {_LAYOUT} "
                "(point wham_folder at wham_noise or its parent)"
            )
        self.sample_rate = sample_rate
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        # headers checked now (missing, corrupt, empty, truncated: named errors before any
        # work); NaN / Inf samples when a file is first read (read_audio / read_audio_segment)
        self.infos = [audio_info(f) for f in self.files]
        total = sum(math.ceil(i.frames * sample_rate / i.samplerate) for i in self.infos)
        self.cache_in_memory = total * 4 <= max_cache_mb * 2**20
        self._cache: dict[int, torch.Tensor] = {}
        logger.info(
            "WHAM! %s: %d files, %.1f min%s",
            self.folder,
            len(self.files),
            total / sample_rate / 60,
            " (cached in memory)" if self.cache_in_memory else "",
        )

    @classmethod
    def from_hparams(
        cls, hparams: dict, split: str | None = None, enabled: bool | None = None
    ) -> WhamNoise | None:
        """The noise source a recipe's YAML asks for, or None when it asks for none.

        Reads ``add_wham_noise`` (unless ``enabled`` is given), ``wham_folder`` (checked
        first, with the fix in the error), ``wham_split`` (unless ``split`` is given, e.g. the
        test split), ``seed`` (plus the DDP rank, so that processes draw different crops) and
        the front-end's ``sample_rate`` (``frontend``, else ``sample_rate``).
        """
        from speechbrain.utils.distributed import get_rank

        enabled = bool(hparams["add_wham_noise"] if enabled is None else enabled)
        folder = check_wham_args(enabled, hparams["wham_folder"])
        if not enabled:
            return None
        frontend = hparams.get("frontend")
        sample_rate = frontend.sample_rate if frontend is not None else hparams["sample_rate"]
        return cls(
            folder,
            sample_rate=int(sample_rate),
            split=split or hparams["wham_split"],
            seed=int(hparams["seed"]) + (get_rank() or 0),
        )

    def reset(self) -> None:
        """Re-seed: the next draws repeat the first draws of this source."""
        self.generator.manual_seed(self.seed)

    def __len__(self) -> int:
        return len(self.files)

    _processes: list | None = None

    def gather_process_states(self) -> None:
        """Under DDP, gather every process's generator (each is seeded ``seed + rank``)
        before rank 0 saves them, so that each process resumes its own."""
        from audio_interpretability.distributed import gather_process_states

        self._processes = gather_process_states({"generator": self.generator.get_state()})

    @mark_as_saver
    def _save(self, path) -> None:
        state = {"generator": self.generator.get_state(), "seed": self.seed}
        if self._processes is not None:
            state["processes"] = self._processes
            self._processes = None
        torch.save(state, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch) -> None:
        from audio_interpretability.distributed import own_process_state

        del end_of_epoch
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.generator.set_state(own_process_state(saved, "The WHAM! noise generator")["generator"])

    def _n_samples(self, index: int) -> int:
        """Length of file ``index`` at the output sample rate."""
        info = self.infos[index]
        return math.ceil(info.frames * self.sample_rate / info.samplerate)

    def _read(self, index: int, start: int, length: int) -> torch.Tensor:
        """Mono samples [start, start + length) of file ``index`` at the output sample rate.

        Read through :mod:`audio_interpretability.data.audio`: a file with NaN / Inf samples
        raises ``AudioError`` naming it; a silent file (or crop) is logged once.
        """
        if self.cache_in_memory:
            if index not in self._cache:
                self._cache[index] = read_audio(self.files[index], self.sample_rate)
            return self._cache[index][start : start + length]
        return read_audio_segment(
            self.files[index], self.sample_rate, start, length, info=self.infos[index]
        )  # (<= length,)

    def sample(self, n: int, length: int) -> torch.Tensor:
        """Draw ``n`` noise crops of ``length`` samples (random files, random offsets).

        Files shorter than ``length`` are zero-padded at the end.

        Returns
        -------
        torch.Tensor
            (n, length) float32 mono noise.
        """
        out = torch.zeros(n, length)
        indices = torch.randint(len(self.files), (n,), generator=self.generator)
        for row, index in enumerate(indices.tolist()):
            available = self._n_samples(index)
            if available > length:
                start = int(torch.randint(available - length + 1, (1,), generator=self.generator))
            else:
                start = 0
            crop = self._read(index, start, length)
            out[row, : crop.numel()] = crop
        return out


def mix_at_snr(
    clean: torch.Tensor,
    noise: torch.Tensor,
    snr_db: float | torch.Tensor = 0.0,
    return_parts: bool = False,
):
    """Mix clean audio and noise at ``snr_db`` (energy ratio), then peak-normalise.

    The noise of each item is scaled so that ``10 log10(E_clean / E_noise) == snr_db``; the
    sum is divided by its absolute peak (a silent mixture stays zeros). A silent noise item
    adds nothing; a silent clean item gives a silent mixture (no finite gain reaches the SNR).

    Arguments
    ---------
    clean : torch.Tensor
        (B, T) clean waveforms.
    noise : torch.Tensor
        (B, T) noise waveforms.
    snr_db : float or torch.Tensor
        Target SNR in dB (scalar, or (B,) per item).
    return_parts : bool
        Also return the scaled clean and noise parts (their sum is the mixture).

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        mixture (B, T), or (mixture, clean_part, noise_part).

    Example
    -------
    >>> clean, noise = torch.randn(2, 800), torch.randn(2, 800)
    >>> mix, c, n = mix_at_snr(clean, noise, snr_db=5.0, return_parts=True)
    >>> mix.shape, torch.allclose(mix, c + n)
    (torch.Size([2, 800]), True)
    >>> round(float(10 * torch.log10(c[0].pow(2).sum() / n[0].pow(2).sum())), 3)
    5.0
    """
    if clean.shape != noise.shape or clean.dim() != 2:
        raise ValueError(
            f"clean and noise must both be (batch, time) of the same shape, got "
            f"{tuple(clean.shape)} and {tuple(noise.shape)}; crop the noise to the clean length"
        )
    snr = torch.as_tensor(snr_db, dtype=clean.dtype, device=clean.device).reshape(-1, 1)
    energy_clean = clean.pow(2).sum(dim=-1, keepdim=True)  # (B, 1)
    energy_noise = noise.pow(2).sum(dim=-1, keepdim=True)  # (B, 1)
    target_noise = energy_clean * torch.pow(10.0, -snr / 10)  # (B, 1)
    gain = torch.where(
        energy_noise > 0,
        torch.sqrt(target_noise / energy_noise.clamp_min(torch.finfo(clean.dtype).tiny)),
        torch.zeros_like(energy_noise),
    )
    noise_part = noise * gain
    mixture = clean + noise_part
    scale = peak_scale(mixture)  # (B, 1)
    clean_part, noise_part = clean * scale, noise_part * scale
    mixture = clean_part + noise_part
    if return_parts:
        return mixture, clean_part, noise_part
    return mixture
