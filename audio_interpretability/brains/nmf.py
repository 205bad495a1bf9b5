"""``NMFBrain``: trains the amortised NMF dictionary of L2I (``train_nmf.py``, ``nmf.yaml``).

As the published ``recipes/ESC50/interpret/train_nmf.py``: the waveforms go through the STFT
(``compute_stft``), the magnitude (``compute_stft_mag``, power 0.5) and ``log1p``, giving
``X = log1p(|STFT|)`` (B, frames, bins), the same spectrogram as
:class:`audio_interpretability.features.Frontend`; SpeechBrain's ``NMFEncoder`` predicts the
activations ``H`` (B, K, frames) and ``NMFDecoderAudio`` reconstructs ``relu(W) @ relu(H)``.
The loss is the mean squared error ``((X - Xhat) ** 2).mean()``, and the checkpointer keeps
the checkpoint of lowest validation ``loss``. Every ``save_period`` epochs (published: the
period of the debugging reconstructions) the decoder is exported to
``<save_folder>/nmf_decoder.ckpt`` and a PNG of atoms and a reconstruction is written to
``<output_folder>/nmf_rec/epoch_<n>.png``. Differences from the published script: those
PNGs go to the output folder (published: ``./nmf_rec`` in the working directory, one figure per
clip overwritten), the loss does not ``squeeze`` the target (the same value, except that a batch
of one clip fails there), and the test stage also scores :func:`audio_interpretability.nmf.
decompose` with the learned dictionary (``mse_decompose``), the decomposition L2I relies on.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process

from audio_interpretability.nmf import (
    amortised_decomposition,
    decompose,
    dictionary,
    export_nmf_decoder,
    load_nmf_decoder,
    plot_nmf,
    reconstruction_error,
)

logger = logging.getLogger(__name__)

__all__ = ["NMFBrain", "NMFForward"]


class NMFForward(NamedTuple):
    """What :meth:`NMFBrain.compute_forward` returns.

    Attributes
    ----------
    X : torch.Tensor
        (B, frames, bins) ``log1p(|STFT|)`` of the batch.
    H : torch.Tensor
        (B, K, frames) activations predicted by the encoder.
    Xhat : torch.Tensor
        (B, frames, bins) the decoder's reconstruction.
    """

    X: torch.Tensor
    H: torch.Tensor
    Xhat: torch.Tensor


class NMFBrain(sb.Brain):
    """Trains ``nmf_encoder`` + ``nmf_decoder`` to reconstruct ``log1p(|STFT|)`` (L2 loss).

    Hparams read: ``compute_stft``, ``compute_stft_mag``, ``nmf_encoder``, ``nmf_decoder`` (also
    in ``modules``), ``nmf_decoder_path`` (a trained decoder to start from, or null),
    ``save_period``, ``save_folder``, ``output_folder``, ``save_nmfdictionary``,
    ``nmf_savepath``, ``decompose_n_iter``, ``decompose_loss``, ``epoch_counter``,
    ``train_logger``.

    Arguments
    ---------
    *args, **kwargs
        As :class:`speechbrain.Brain`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        period = self.hparams.save_period
        if int(period) != period or period < 1:
            raise ValueError(f"save_period must be a positive integer, got {period}; e.g. 10.")
        if self.hparams.nmf_decoder_path:
            load_nmf_decoder(self.hparams.nmf_decoder_path, self.hparams.nmf_decoder)
            logger.info("NMF decoder loaded from %s", self.hparams.nmf_decoder_path)

    # ------------------------------------------------------------------ forward / loss
    def spectrogram(self, wavs: torch.Tensor) -> torch.Tensor:
        """``log1p(|STFT|)`` (B, frames, bins) of (B, T) waveforms, as published."""
        stft = self.hparams.compute_stft(wavs)  # (B, frames, bins, 2)
        return torch.log1p(self.hparams.compute_stft_mag(stft))  # (B, frames, bins)

    def compute_forward(self, batch, stage) -> NMFForward:
        """Spectrogram, encoder activations and reconstruction of a batch."""
        batch = batch.to(self.device)
        wavs, _ = batch.sig
        X = self.spectrogram(wavs)
        H, Xhat = amortised_decomposition(self.modules.nmf_encoder, self.modules.nmf_decoder, X)
        return NMFForward(X=X, H=H, Xhat=Xhat)

    def compute_objectives(self, predictions: NMFForward, batch, stage) -> torch.Tensor:
        """The published loss ``mean((X - Xhat)^2)``; outside training also the per-clip errors
        (and, when testing, those of :func:`decompose` on the learned dictionary)."""
        X, _, Xhat = predictions
        loss = ((X - Xhat) ** 2).mean()
        if stage != sb.Stage.TRAIN:
            with torch.no_grad():
                self.errors.append(reconstruction_error(X, Xhat).cpu())
                if stage == sb.Stage.TEST:
                    W = dictionary(self.hparams.nmf_decoder).detach()
                    dec = decompose(
                        X,
                        W,
                        n_iter=self.hparams.decompose_n_iter,
                        loss=self.hparams.decompose_loss,
                    )
                    self.decompose_errors.append(reconstruction_error(X, dec.Xhat).cpu())
                if self.example is None:
                    self.example = (X[0].detach().cpu(), Xhat[0].detach().cpu())
        return loss

    # ------------------------------------------------------------------ stages
    def on_stage_start(self, stage, epoch=None):
        """Reset the per-clip errors of the stage."""
        self.errors, self.decompose_errors, self.example = [], [], None

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log, checkpoint (lowest validation ``loss``), export every ``save_period`` epochs,
        write ``test_metrics.json`` after testing."""
        stats = {"loss": float(stage_loss)}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        errors = torch.cat(self.errors) if self.errors else torch.zeros(0)
        stats["mse"] = float(errors.mean()) if len(errors) else float("nan")
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch},
                train_stats=getattr(self, "train_stats", None),
                valid_stats=stats,
            )
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(
                    meta={"loss": stats["loss"]}, min_keys=["loss"]
                )
            if epoch is not None and epoch % int(self.hparams.save_period) == 0:
                self.save_period_outputs(epoch)
            return
        stats["mse_decompose"] = float(torch.cat(self.decompose_errors).mean())
        stats["n_samples"] = float(len(errors))
        self.hparams.train_logger.log_stats(
            stats_meta={"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
        )
        if if_main_process():
            path = Path(self.hparams.output_folder) / "test_metrics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stats, indent=2), encoding="utf-8")
            if self.example is not None:
                self.plot(Path(self.hparams.output_folder) / "nmf_test.png", "test")
        self.test_stats = stats

    # ------------------------------------------------------------------ outputs
    def plot(self, path: Path, title: str) -> Path:
        """Atoms of the dictionary and the first clip's reconstruction of the stage."""
        X, Xhat = self.example
        W = dictionary(self.hparams.nmf_decoder).detach().cpu()
        return plot_nmf(path, W, X, Xhat, title=title)

    def save_period_outputs(self, epoch: int) -> None:
        """``<save_folder>/nmf_decoder.ckpt`` and ``<output_folder>/nmf_rec/epoch_<n>.png``."""
        if not if_main_process():
            return
        self.export()
        if self.example is not None:
            folder = Path(self.hparams.output_folder) / "nmf_rec"
            self.plot(folder / f"epoch_{epoch}.png", f"epoch {epoch}")

    def export(self) -> Path:
        """Write the decoder to ``<save_folder>/nmf_decoder.ckpt`` (published layout), and the
        dictionary ``relu(W)`` to ``nmf_savepath`` when ``save_nmfdictionary`` (published).
        Only the main process writes; every process gets the path."""
        path = Path(self.hparams.save_folder) / "nmf_decoder.ckpt"
        if not if_main_process():
            return path
        decoder = self.hparams.nmf_decoder  # the module itself (self.modules may wrap it: DDP)
        export_nmf_decoder(decoder, path)
        if self.hparams.save_nmfdictionary:
            os.makedirs(os.path.dirname(os.path.abspath(self.hparams.nmf_savepath)), exist_ok=True)
            torch.save(dictionary(decoder).detach().cpu(), self.hparams.nmf_savepath)
        return path
