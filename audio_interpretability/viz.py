"""Figures and listenable WAVs of interpretations, written atomically.

* :func:`save_wav` writes a mono float32 WAV (clipped to [-1, 1], NaN / Inf rejected).
* :func:`plot_interpretation` draws spectrogram-like panels side by side into a PNG.
* :func:`save_interpretation` writes, for one clip ``name``::

      <folder>/<name>/original.wav
      <folder>/<name>/interpretation.wav
      <folder>/<name>/<name>.png

Every file is written to a temporary name in its destination folder and moved into place
with ``os.replace``, so a failure never leaves a half-written file; all inputs are checked
before the first file is written. Figures use matplotlib's object-oriented API with the Agg
canvas (no ``pyplot``, so the caller's backend and figure registry are left untouched).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from audio_interpretability.checkpointing import apply_umask

logger = logging.getLogger(__name__)

__all__ = [
    "InterpretationFiles",
    "plot_interpretation",
    "save_interpretation",
    "save_wav",
    "save_wav_stream",
]

ArrayLike = torch.Tensor | np.ndarray

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+=@-]+$")


class InterpretationFiles(NamedTuple):
    """Paths written by :func:`save_interpretation`."""

    original: Path
    interpretation: Path
    figure: Path


def _to_numpy(name: str, array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().float().cpu().numpy()
    array = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"{name} contains NaN or Inf values; fix the computation that produced it "
            "(nothing was written)."
        )
    return array


def _prepare_wav(wav: ArrayLike, name: str = "wav") -> np.ndarray:
    """(T,) or (1, T) waveform -> finite float32 (T,) clipped to [-1, 1]."""
    data = _to_numpy(name, wav)
    if data.ndim == 2 and data.shape[0] == 1:
        data = data[0]  # (1, T) -> (T,)
    if data.ndim != 1 or data.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty mono waveform of shape (T,) or (1, T), got "
            f"{tuple(data.shape)}; save one clip at a time."
        )
    peak = float(np.max(np.abs(data)))
    if peak > 1.0:
        logger.warning("%s peaks at %.3f; clipping to [-1, 1] before saving.", name, peak)
        data = np.clip(data, -1.0, 1.0)
    return data


def _prepare_panels(panels: Sequence[tuple[str, ArrayLike]]) -> list[tuple[str, np.ndarray]]:
    if len(panels) == 0:
        raise ValueError("panels is empty; pass at least one (title, (frames, bins) array).")
    out = []
    for title, array in panels:
        data = _to_numpy(f"panel {title!r}", array)
        if data.ndim != 2 or data.size == 0:
            raise ValueError(
                f"panel {title!r} must be a non-empty 2-D (frames, bins) array, got shape "
                f"{tuple(data.shape)}; drop the batch/channel dims (e.g. x[0])."
            )
        out.append((str(title), data))
    return out


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        apply_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _write_wav(path: Path, data: np.ndarray, sample_rate: int) -> Path:
    return _atomic_write(
        path, lambda tmp: sf.write(tmp, data, sample_rate, format="WAV", subtype="FLOAT")
    )


def _check_sample_rate(sample_rate: int) -> None:
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}.")


def save_wav(path: str | os.PathLike, wav: ArrayLike, sample_rate: int) -> Path:
    """Write a mono waveform as a float32 WAV, atomically.

    Values outside [-1, 1] are clipped (with a logged warning); NaN / Inf raise.

    Arguments
    ---------
    path : str or os.PathLike
        Destination ``.wav`` file (parent folders are created).
    wav : torch.Tensor or numpy.ndarray
        (T,) or (1, T) waveform.
    sample_rate : int
        Sample rate in Hz.

    Returns
    -------
    pathlib.Path
        The written path.

    Example
    -------
    >>> import tempfile, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> out = save_wav(folder + "/tone.wav", torch.sin(torch.arange(800.0) / 5), 16000)
    >>> soundfile.info(str(out)).frames
    800
    """
    _check_sample_rate(sample_rate)
    return _write_wav(Path(path), _prepare_wav(wav), int(sample_rate))


def save_wav_stream(
    path: str | os.PathLike, chunks: Iterable[ArrayLike], sample_rate: int
) -> tuple[Path, int]:
    """Write mono waveform pieces one after the other into one float32 WAV, atomically: the
    file appears only when every piece is written (an error in the middle leaves nothing).

    Holds one piece at a time (long files interpreted chunk by chunk); each piece is checked
    and clipped as in :func:`save_wav`.

    Arguments
    ---------
    path : str or os.PathLike
        Destination ``.wav`` file (parent folders are created).
    chunks : Iterable of (T_i,) waveforms
        The pieces, in order (a generator is consumed as it is written).
    sample_rate : int
        Sample rate in Hz.

    Returns
    -------
    tuple[pathlib.Path, int]
        The written path and its number of samples.

    Example
    -------
    >>> import tempfile, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> out, n = save_wav_stream(folder + "/x.wav", (torch.zeros(800) for _ in range(3)), 16000)
    >>> n, soundfile.info(str(out)).frames
    (2400, 2400)
    """
    _check_sample_rate(sample_rate)
    written = 0

    def write(tmp: str) -> None:
        nonlocal written
        with sf.SoundFile(
            tmp, "w", samplerate=int(sample_rate), channels=1, format="WAV", subtype="FLOAT"
        ) as f:
            for i, chunk in enumerate(chunks):
                data = _prepare_wav(chunk, f"piece {i}")
                f.write(data)
                written += data.shape[0]
        if written == 0:
            raise ValueError("save_wav_stream got no samples; pass at least one piece.")

    return _atomic_write(Path(path), write), written


def _render_png(
    path: Path,
    panels: list[tuple[str, np.ndarray]],
    suptitle: str,
    sample_rate: int | None,
    hop_samples: int | None,
) -> Path:
    n = len(panels)
    width = 4.0 * n + 1.0
    # fixed margins (in inches) rather than layout="constrained": half the rendering time
    # (the demo saves hundreds of these figures)
    fig = Figure(figsize=(width, 3.6))
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.15, top=0.82,
                        wspace=0.45)  # fmt: skip
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    with_units = sample_rate is not None and hop_samples is not None
    for ax, (title, data) in zip(axes, panels):
        frames, bins = data.shape
        extent = None
        if with_units:
            extent = (0.0, frames * hop_samples / sample_rate, 0.0, sample_rate / 2.0)
        image = ax.imshow(
            data.T, origin="lower", aspect="auto", interpolation="nearest", extent=extent
        )  # (bins, frames): time on x, frequency on y
        ax.set_title(title)
        ax.set_xlabel("time (s)" if with_units else "frame")
        ax.set_ylabel("frequency (Hz)" if with_units else "frequency bin")
        fig.colorbar(image, ax=ax)
    if suptitle:
        fig.suptitle(suptitle)
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def plot_interpretation(
    path: str | os.PathLike,
    panels: Sequence[tuple[str, ArrayLike]],
    suptitle: str = "",
    sample_rate: int | None = None,
    hop_samples: int | None = None,
) -> Path:
    """Draw spectrogram-like panels side by side (time on x, frequency on y) into a PNG.

    Arguments
    ---------
    path : str or os.PathLike
        Destination ``.png`` file (parent folders are created; written atomically).
    panels : Sequence[tuple[str, array]]
        ``(title, (frames, bins) array)`` per panel, e.g. the input X, the mask, M * X.
        Each panel gets its own colorbar.
    suptitle : str
        Figure title (e.g. clip id, true and predicted class).
    sample_rate, hop_samples : int, optional
        When both are given, axes are labelled in seconds and Hz (bins span 0..sr/2);
        otherwise in frames and bins.

    Returns
    -------
    pathlib.Path
        The written path.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> X = torch.rand(50, 65)
    >>> out = plot_interpretation(folder + "/fig.png", [("X", X), ("mask", X > 0.5)], "clip")
    >>> out.stat().st_size > 0
    True
    """
    prepared = _prepare_panels(panels)
    if (sample_rate is None) != (hop_samples is None):
        raise ValueError("give both sample_rate and hop_samples (axes in s / Hz) or neither.")
    if sample_rate is not None:
        _check_sample_rate(sample_rate)
        if int(hop_samples) <= 0:
            raise ValueError(f"hop_samples must be positive, got {hop_samples}.")
    return _render_png(Path(path), prepared, suptitle, sample_rate, hop_samples)


def save_interpretation(
    folder: str | os.PathLike,
    name: str,
    original: ArrayLike,
    interpretation: ArrayLike,
    sample_rate: int,
    panels: Sequence[tuple[str, ArrayLike]],
    suptitle: str = "",
    hop_samples: int | None = None,
    extra_wavs: dict[str, ArrayLike] | None = None,
) -> InterpretationFiles:
    """Write one clip's original and interpretation WAVs and its figure.

    Files: ``<folder>/<name>/original.wav``, ``<folder>/<name>/interpretation.wav``,
    ``<folder>/<name>/<name>.png`` (and ``<folder>/<name>/<key>.wav`` for each of
    ``extra_wavs``). Every input is validated before the first file is written, and each file
    is written atomically.

    Arguments
    ---------
    folder : str or os.PathLike
        Output folder (e.g. ``<output_folder>/interpretations``).
    name : str
        Clip id (a single path component: letters, digits, ``._+=@-``).
    original : torch.Tensor or numpy.ndarray
        (T,) or (1, T) input waveform.
    interpretation : torch.Tensor or numpy.ndarray
        (T,) or (1, T) listenable interpretation.
    sample_rate : int
        Sample rate in Hz of both waveforms.
    panels : Sequence[tuple[str, array]]
        ``(title, (frames, bins) array)`` panels for :func:`plot_interpretation`.
    suptitle : str
        Figure title.
    hop_samples : int, optional
        STFT hop in samples; when given, figure axes are in seconds and Hz.
    extra_wavs : dict, optional
        More ``{file stem: (T,) waveform}`` to write beside them (e.g. the two sources of an
        overlap test).

    Returns
    -------
    InterpretationFiles
        Named tuple of the three paths ``(original, interpretation, figure)``.

    Example
    -------
    >>> import tempfile
    >>> wav = 0.1 * torch.randn(1600)
    >>> files = save_interpretation(
    ...     tempfile.mkdtemp(), "1-100-A-0", wav, 0.5 * wav, 16000, [("X", torch.rand(9, 65))]
    ... )
    >>> [p.name for p in files]
    ['original.wav', 'interpretation.wav', '1-100-A-0.png']
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"name {name!r} is not a plain file name; use the clip id with only letters, "
            "digits and ._+=@- (no path separators)."
        )
    _check_sample_rate(sample_rate)
    orig = _prepare_wav(original, "original")
    interp = _prepare_wav(interpretation, "interpretation")
    prepared = _prepare_panels(panels)
    if hop_samples is not None and int(hop_samples) <= 0:
        raise ValueError(f"hop_samples must be positive, got {hop_samples}.")
    extras = {}
    for key, wav in (extra_wavs or {}).items():
        if not _SAFE_NAME.match(key) or key in ("original", "interpretation"):
            raise ValueError(f"extra_wavs key {key!r} is not a free plain file stem.")
        extras[key] = _prepare_wav(wav, key)

    clip_folder = Path(folder) / name
    for key, wav in extras.items():
        _write_wav(clip_folder / f"{key}.wav", wav, int(sample_rate))
    return InterpretationFiles(
        original=_write_wav(clip_folder / "original.wav", orig, int(sample_rate)),
        interpretation=_write_wav(clip_folder / "interpretation.wav", interp, int(sample_rate)),
        figure=_render_png(
            clip_folder / f"{name}.png",
            prepared,
            suptitle,
            sample_rate if hop_samples is not None else None,
            hop_samples,
        ),
    )
