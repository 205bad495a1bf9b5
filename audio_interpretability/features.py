"""STFT front-end shared by every recipe: magnitude, log1p, mel, phase, and the inverse.

The published SpeechBrain ESC-50 recipes use ``speechbrain.processing.features.STFT``
(Hamming window, centred frames), ``spectral_magnitude(power=0.5)`` (magnitude),
``log1p`` on top, a linear (not log) mel ``Filterbank`` followed by ``log1p`` for CNN14,
and ``ISTFT`` with the input phase to listen to an interpretation. This module wraps
exactly those pieces so checkpoints trained there see the same features here, and so the
STFT is computed once per batch and its parts are passed along.

Data flow (one batch)::

    wav (B, T) -> STFT (B, frames, bins, 2) -> magnitude (B, frames, bins)
               -> X = log1p(magnitude)                  (the "linear spectrogram")
               -> phase = atan2(imag, real)             (kept for inversion)
    mask M (B, frames, bins) in [0, 1]
    expm1(M * X) with phase -> ISTFT -> listenable waveform (B, T)

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from speechbrain.processing.features import ISTFT, STFT, Filterbank, spectral_magnitude


class Spectrogram(NamedTuple):
    """What the front-end computes once per batch.

    Attributes
    ----------
    stft : torch.Tensor
        (B, frames, bins, 2) real and imaginary parts.
    magnitude : torch.Tensor
        (B, frames, bins) ``|STFT|`` (``spectral_magnitude(power=0.5)``).
    X : torch.Tensor
        (B, frames, bins) ``log1p(magnitude)``: the spectrogram interpreters mask.
    phase : torch.Tensor
        (B, frames, bins) STFT phase in radians.
    """

    stft: torch.Tensor
    magnitude: torch.Tensor
    X: torch.Tensor
    phase: torch.Tensor


class Frontend(torch.nn.Module):
    """STFT front-end: log1p magnitude, phase, log1p mel, and inversion to audio.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the waveforms (Hz).
    n_fft : int
        FFT size (bins = n_fft // 2 + 1).
    win_length : float
        Window length in milliseconds (SpeechBrain convention; 23.2199 ms = 372 samples at 16 kHz).
    hop_length : float
        Hop length in milliseconds (11.6099 ms = 186 samples at 16 kHz).
    n_mels : int
        Number of mel bands for ``log_mel``.
    spec_mag_power : float
        Power of the magnitude (0.5 gives ``|STFT|``, 1 the power spectrum), as in the
        published recipes.

    Example
    -------
    >>> frontend = Frontend(sample_rate=16000)
    >>> spec = frontend(torch.randn(2, 16000))
    >>> spec.X.shape
    torch.Size([2, 87, 513])
    >>> frontend.log_mel(spec.X).shape
    torch.Size([2, 87, 80])
    >>> frontend.invert(torch.expm1(spec.X), spec.phase, length=16000).shape
    torch.Size([2, 16000])
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        win_length: float = 23.2199,
        hop_length: float = 11.6099,
        n_mels: int = 80,
        spec_mag_power: float = 0.5,
    ):
        super().__init__()
        if spec_mag_power <= 0:
            raise ValueError(f"spec_mag_power must be > 0, got {spec_mag_power}")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.n_mels = n_mels
        self.spec_mag_power = spec_mag_power
        self.compute_stft = STFT(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length
        )
        self.compute_istft = ISTFT(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length
        )
        self.compute_fbank = Filterbank(
            n_mels=n_mels, n_fft=n_fft, sample_rate=sample_rate, log_mel=False
        )

    @property
    def hop_samples(self) -> int:
        """Hop length in samples."""
        return self.compute_stft.hop_length

    @property
    def n_bins(self) -> int:
        """Number of linear-frequency bins (n_fft // 2 + 1)."""
        return self.n_fft // 2 + 1

    def n_frames(self, n_samples: int) -> int:
        """Number of STFT frames for a waveform of ``n_samples`` samples (centred frames)."""
        return n_samples // self.hop_samples + 1

    def forward(self, wavs: torch.Tensor) -> Spectrogram:
        """Compute the STFT once and derive magnitude, log1p magnitude and phase.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, T) waveforms.

        Returns
        -------
        Spectrogram
            Named tuple (stft, magnitude, X, phase); see :class:`Spectrogram`.
        """
        if wavs.dim() != 2:
            raise ValueError(
                f"Frontend expects (batch, time) waveforms, got shape {tuple(wavs.shape)}"
            )
        stft = self.compute_stft(wavs)  # (B, frames, bins, 2)
        magnitude = spectral_magnitude(stft, power=self.spec_mag_power)  # (B, frames, bins)
        X = torch.log1p(magnitude)
        phase = torch.atan2(stft[..., 1], stft[..., 0])  # (B, frames, bins)
        return Spectrogram(stft=stft, magnitude=magnitude, X=X, phase=phase)

    def mel(self, magnitude: torch.Tensor) -> torch.Tensor:
        """log1p mel spectrogram from a (B, frames, bins) magnitude: (B, frames, n_mels)."""
        return torch.log1p(self.compute_fbank(magnitude))

    def log_mel(self, X: torch.Tensor) -> torch.Tensor:
        """log1p mel spectrogram from a log1p magnitude ``X`` (masked or not).

        This is the classifier input of CNN14 for a masked spectrogram ``M * X``:
        ``log1p(fbank(expm1(M * X)))``.
        """
        return self.mel(torch.expm1(X))

    def invert(
        self, magnitude: torch.Tensor, phase: torch.Tensor, length: int | None = None
    ) -> torch.Tensor:
        """Waveform from a (B, frames, bins) magnitude and the input phase (ISTFT).

        Arguments
        ---------
        magnitude : torch.Tensor
            (B, frames, bins) linear magnitude (e.g. ``expm1(M * X)``).
        phase : torch.Tensor
            (B, frames', bins) phase with frames' >= frames (cropped to ``frames``).
        length : int, optional
            Number of output samples (pads or crops the ISTFT output).

        Returns
        -------
        torch.Tensor
            (B, T) waveform.
        """
        phase = phase[:, : magnitude.shape[1]]
        if self.spec_mag_power != 0.5:
            magnitude = magnitude.clamp_min(0) ** (0.5 / self.spec_mag_power)
        stft = torch.stack(
            (magnitude * torch.cos(phase), magnitude * torch.sin(phase)), dim=-1
        )  # (B, frames, bins, 2)
        covered = (magnitude.shape[1] - 1) * self.hop_samples  # samples the frames reconstruct
        if length is None or length <= covered:
            return self.compute_istft(stft, sig_length=length)
        # Fewer frames than the clip (a mask covering the first frames only): the rest is
        # silence (the ISTFT cannot reconstruct samples no window covers).
        wav = self.compute_istft(stft, sig_length=covered)  # (B, covered)
        return torch.nn.functional.pad(wav, (0, length - covered))
