"""WHAM! noise: random crops of the noise recordings, mixed into clean audio at a chosen SNR.

The real WHAM! noise layout is ``wham_noise/{tr,cv,tt}/*.wav`` (2-channel, 16 kHz, varying
lengths). :class:`WhamNoise` accepts the ``wham_noise`` folder itself or its parent, downmixes
to mono, resamples when needed, draws random files and random crops with its own seeded
``torch.Generator`` (successive batches get different noise, the whole sequence is
reproducible), and zero-pads files shorter than the requested length. :func:`mix_at_snr` mixes
with energy normalisation and then peak-normalises the mixture.

Training noise can instead be drawn per clip in the DataLoader workers
(``wham_noise_in_workers: True``): :meth:`WhamNoise.sample_for` draws the crop of one clip from
a fresh generator seeded by :func:`clip_noise_seed` ``(seed, epoch, clip id)`` (a stable hash),
so the noise a clip gets in an epoch is the same in any process, worker, worker count, batch
order, resumed run or DDP rank. :class:`ClipNoise` is that draw as a dataset's dynamic item
(``noise_sig``), :func:`add_clip_noise` adds it to a training set.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import glob
import hashlib
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
#: The dynamic item of a training set that holds each clip's WHAM! noise (see ClipNoise).
NOISE_KEY = "noise_sig"


def clip_noise_seed(seed: int, epoch: int, key: str) -> int:
    """Seed of the noise of clip ``key`` in ``epoch``: a stable hash of the three.

    BLAKE2b of ``"<seed>:<epoch>:<key>"``, 63 bits: the same in every process and Python
    session (Python's ``hash()`` of a string is salted per process, so it is not used).

    Example
    -------
    >>> clip_noise_seed(1234, 1, "1-100032-A-0")
    2839534929663015950
    >>> clip_noise_seed(1234, 2, "1-100032-A-0") != clip_noise_seed(1234, 1, "1-100032-A-0")
    True
    """
    text = f"{int(seed)}:{int(epoch)}:{key}".encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def wham_noise_in_workers(hparams: dict) -> bool:
    """The ``wham_noise_in_workers`` switch of a YAML, checked (absent: False, the old path).

    Raises
    ------
    ValueError
        The value is not True or False.

    Example
    -------
    >>> wham_noise_in_workers({"wham_noise_in_workers": True})
    True
    >>> wham_noise_in_workers({"wham_noise_in_workers": "yes"})
    Traceback (most recent call last):
      ...
    ValueError: wham_noise_in_workers must be True or False, got 'yes'; pass --wham_noise_in_workers True (training noise drawn per clip in the DataLoader workers) or False (drawn in the forward pass, as before)
    """
    value = hparams.get("wham_noise_in_workers", False)
    if not isinstance(value, bool):
        raise ValueError(
            f"wham_noise_in_workers must be True or False, got {value!r}; pass "
            "--wham_noise_in_workers True (training noise drawn per clip in the DataLoader "
            "workers) or False (drawn in the forward pass, as before)"
        )
    return value


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
    item_seed : int, optional
        Seed of the per-clip draws (:meth:`sample_for`); default ``seed``. The recipes pass
        the YAML's ``seed`` (without the DDP rank: every process draws a clip's same noise).
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
    >>> torch.equal(noise.sample_for("clip-1", 1, 4000), noise.sample_for("clip-1", 1, 4000))
    True
    """

    def __init__(
        self,
        wham_folder: str,
        sample_rate: int = 16000,
        split: str = "tr",
        seed: int = 0,
        max_cache_mb: float = 512.0,
        item_seed: int | None = None,
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
        self.item_seed = self.seed if item_seed is None else int(item_seed)
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
        the front-end's ``sample_rate`` (``frontend``, else ``sample_rate``). The per-clip
        draws (:meth:`sample_for`) are seeded by ``seed`` alone, the same in every process.
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
            item_seed=int(hparams["seed"]),
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

    def sample_for(self, key: str, epoch: int, length: int) -> torch.Tensor:
        """The noise crop of clip ``key`` in ``epoch``: ``length`` samples of a file and offset
        drawn from a fresh generator seeded by :func:`clip_noise_seed` ``(item_seed, epoch,
        key)``.

        Deterministic: the same in any process, DataLoader worker, batch order, resumed run
        or DDP rank; the private generator of :meth:`sample` is neither read nor advanced.
        Files shorter than ``length`` are zero-padded at the end.

        Returns
        -------
        torch.Tensor
            (length,) float32 mono noise.
        """
        generator = torch.Generator().manual_seed(clip_noise_seed(self.item_seed, epoch, key))
        index = int(torch.randint(len(self.files), (1,), generator=generator))
        available = self._n_samples(index)
        start = 0
        if available > length:
            start = int(torch.randint(available - length + 1, (1,), generator=generator))
        out = torch.zeros(length)
        crop = self._read(index, start, length)
        out[: crop.numel()] = crop
        return out


class ClipNoise:
    """Each clip's WHAM! noise as a dataset's dynamic item (``id``, ``sig`` -> ``noise_sig``).

    The item is computed where the dataset is read: in the DataLoader workers when
    ``num_workers > 0``. The epoch is set by the Brain in ``on_stage_start(TRAIN, epoch)``,
    which SpeechBrain's ``fit`` calls before it creates the epoch's DataLoader iterator, so
    workers (forked, or pickled, at that point) read the epoch being trained.
    Persistent workers would keep the epoch they were started with: :func:`add_clip_noise`
    refuses them.

    Arguments
    ---------
    noise : WhamNoise
        The noise source (its :meth:`WhamNoise.sample_for`).

    Example
    -------
    >>> import tempfile
    >>> from audio_interpretability.data.synthetic import generate_wham_noise
    >>> root = tempfile.mkdtemp()
    >>> generate_wham_noise(root, n_files=(2, 1, 1), min_duration=0.5, max_duration=1.0)
    >>> clip_noise = ClipNoise(WhamNoise(root, sample_rate=8000))
    >>> clip_noise.set_epoch(3)
    >>> clip_noise("clip-1", torch.zeros(4000)).shape
    torch.Size([4000])
    """

    def __init__(self, noise: WhamNoise):
        self.noise = noise
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose noise the next DataLoader iterator draws."""
        self.epoch = int(epoch)

    def __call__(self, key: str, sig: torch.Tensor) -> torch.Tensor:
        if self.epoch is None:
            raise RuntimeError(
                "the WHAM! noise of the training clips was read before its epoch was set; "
                "train through Brain.fit (its on_stage_start sets it), or call "
                "ClipNoise.set_epoch(epoch) before iterating the training set"
            )
        return self.noise.sample_for(key, self.epoch, sig.shape[-1])


def add_clip_noise(dataset, noise: WhamNoise, loader_kwargs: dict | None = None) -> ClipNoise:
    """Add each clip's WHAM! noise (:class:`ClipNoise`, key ``noise_sig``) to a training set.

    Idempotent: a dataset that already has it keeps its :class:`ClipNoise`, whose source
    becomes ``noise``.

    Arguments
    ---------
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        The training set (it must provide ``id`` and ``sig``); changed in place.
    noise : WhamNoise
        The noise source.
    loader_kwargs : dict, optional
        The DataLoader options of the training set, checked.

    Returns
    -------
    ClipNoise
        The dynamic item; set its epoch before each epoch's iterator is created.

    Raises
    ------
    ValueError
        ``persistent_workers`` is set with ``num_workers > 0`` (workers started in the first
        epoch would draw the first epoch's noise forever).
    """
    loader_kwargs = loader_kwargs or {}
    if loader_kwargs.get("persistent_workers") and int(loader_kwargs.get("num_workers", 0)) > 0:
        raise ValueError(
            "wham_noise_in_workers is True but the training DataLoader has persistent_workers: "
            "True; workers started in the first epoch would draw that epoch's WHAM! noise in "
            "every epoch. Set persistent_workers: False in dataloader_options, or pass "
            "--wham_noise_in_workers False (noise drawn in the forward pass)"
        )
    existing = getattr(dataset, "clip_noise", None)
    if isinstance(existing, ClipNoise):
        existing.noise = noise
        return existing
    clip_noise = ClipNoise(noise)
    dataset.add_dynamic_item(clip_noise, takes=["id", "sig"], provides=NOISE_KEY)
    dataset.set_output_keys(dict(dataset.pipeline.output_mapping, **{NOISE_KEY: NOISE_KEY}))
    dataset.clip_noise = clip_noise
    return clip_noise


class ClipNoiseMixin:
    """The Brain side of :class:`ClipNoise`, for Brains trained with WHAM! noise.

    With ``wham_noise_in_workers: True`` in the hparams and a noise source
    (:attr:`training_noise`, which the Brain defines), :meth:`make_dataloader` gives the
    training set each clip's noise (:func:`add_clip_noise`, item ``noise_sig``), and
    :meth:`on_stage_start` sets its epoch before ``fit`` creates the epoch's DataLoader
    iterator (hence its workers). Validation and test sets are left alone. Put it first in
    the bases, and call ``super().on_stage_start(stage, epoch)`` from the Brain's own.
    """

    clip_noise: ClipNoise | None = None  # the training set's per-clip noise item

    @property
    def training_noise(self) -> WhamNoise | None:
        """The Brain's noise source of the training clips (None: no noise)."""
        raise NotImplementedError(f"{type(self).__name__} must define training_noise")

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        from speechbrain.core import Stage

        noise = self.training_noise
        if (
            stage == Stage.TRAIN
            and noise is not None
            and wham_noise_in_workers(self.hparams.__dict__)
            and hasattr(dataset, "add_dynamic_item")
        ):
            self.clip_noise = add_clip_noise(dataset, noise, loader_kwargs)
        return super().make_dataloader(dataset, stage, ckpt_prefix=ckpt_prefix, **loader_kwargs)

    def on_stage_start(self, stage, epoch=None):
        from speechbrain.core import Stage

        if stage == Stage.TRAIN and self.clip_noise is not None and epoch is not None:
            self.clip_noise.set_epoch(epoch)
        return super().on_stage_start(stage, epoch)


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
