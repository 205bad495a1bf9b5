"""AMT: activation-map thresholding, the interpretable-by-design explanation of FocalNet / ViT.

Della Libera, Subakan, Ravanelli, "Focal Modulation Networks for Interpretable Sound
Classification" (ICASSP 2024 XAI-SA workshop). The classifier's own intermediate maps (FocalNet
modulators, ViT CLS attentions) are aggregated into a saliency map by the backbone
(``backbone.saliency(maps, **saliency_options)``), resized to the spectrogram grid, and
thresholded at a per-sample quantile into a binary mask::

    maps -> saliency (B, h, w) -> bilinear resize (B, frames, bins)
         -> mask = 1[saliency >= its per-sample `quantile`]     (1 - quantile of the bins kept)
    interpretation = mask * X;  listenable audio = ISTFT(expm1(mask * X), input phase)

Everything else (front-end, classifier passes, metrics, saved files) is the
:class:`~audio_interpretability.brains.interpreter.InterpreterBrain` base's. This module adds
nothing else: the overlap test of the published recipe is
:func:`audio_interpretability.brains.evaluation.evaluate_overlap`, shared by every interpreter.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
import math

import torch

from audio_interpretability.brains.interpreter import InterpreterBrain, MaskOutput
from audio_interpretability.features import Spectrogram
from audio_interpretability.models.base import ClassifierOutput
from audio_interpretability.models.image_input import image_to_spectrogram

logger = logging.getLogger(__name__)

__all__ = [
    "InterpreterESC50Brain",
    "normalize_per_sample",
    "quantile_mask",
]


# --------------------------------------------------------------------------------------------
# Mask making
# --------------------------------------------------------------------------------------------
def quantile_mask(saliency: torch.Tensor, quantile: float) -> torch.Tensor:
    """Binary mask of the bins at or above each sample's ``quantile`` of the saliency.

    Exactly ``k = round((1 - quantile) * N)`` of the N values of each sample are kept: the k
    largest. Where values tie at the threshold, the first ones in flat (row-major) order are
    kept, so the kept fraction is the closest possible to ``1 - quantile`` even for a flat map,
    and the result is deterministic. Without ties at the threshold this is exactly
    ``saliency >= kth largest value``.

    Arguments
    ---------
    saliency : torch.Tensor
        (B, ...) saliency (any floating dtype; compared in float32).
    quantile : float
        In [0, 1]; 0.9 keeps the top 10 % of the bins, 0 keeps all, 1 keeps none.

    Returns
    -------
    torch.Tensor
        (B, ...) float32 mask of 0 and 1 on the saliency's device.

    Example
    -------
    >>> s = torch.tensor([[[0.1, 0.9], [0.5, 0.3]], [[1.0, 1.0], [1.0, 1.0]]])
    >>> quantile_mask(s, 0.5)
    tensor([[[0., 1.],
             [1., 0.]],
    <BLANKLINE>
            [[1., 1.],
             [0., 0.]]])
    """
    if not 0.0 <= float(quantile) <= 1.0:
        raise ValueError(
            f"quantile must be in [0, 1] (0.9 keeps the top 10% of the bins), got {quantile}; "
            "pass e.g. --quantile 0.9."
        )
    if saliency.dim() < 2 or saliency.numel() == 0:
        raise ValueError(
            f"saliency must be a non-empty batched (B, ...) tensor, got shape "
            f"{tuple(saliency.shape)}; add the batch dimension with unsqueeze(0)."
        )
    flat = saliency.detach().float().reshape(saliency.shape[0], -1)  # (B, N)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(
            "saliency holds NaN or Inf values; check the classifier's maps (e.g. a checkpoint "
            "that does not match the model, or an overflow under --precision fp16)."
        )
    n = flat.shape[1]
    k = int(math.floor((1.0 - float(quantile)) * n + 0.5))
    if k == 0:
        return torch.zeros_like(flat).reshape(saliency.shape)
    # The k-th largest value t: fewer than k values are > t, at least k are >= t. Keep all
    # values > t, then the first (in flat order) of those == t until k are kept. O(N).
    t = flat.kthvalue(n - k + 1, dim=1, keepdim=True).values  # (B, 1)
    above = flat > t  # (B, N)
    ties = flat == t  # (B, N)
    need = k - above.sum(dim=1, keepdim=True)  # (B, 1), in [1, ties.sum()]
    mask = above | (ties & (ties.cumsum(dim=1) <= need))
    return mask.float().reshape(saliency.shape)


def normalize_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each sample of a (B, ...) tensor to [0, 1] (a flat sample gives 0).

    Example
    -------
    >>> normalize_per_sample(torch.tensor([[2.0, 4.0, 3.0], [5.0, 5.0, 5.0]]))
    tensor([[0.0000, 1.0000, 0.5000],
            [0.0000, 0.0000, 0.0000]])
    """
    flat = x.float().reshape(x.shape[0], -1)  # (B, N)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    out = torch.where(span > 0, (flat - low) / span.clamp_min(1e-30), torch.zeros_like(flat))
    return out.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# The Brain
# --------------------------------------------------------------------------------------------
class InterpreterESC50Brain(InterpreterBrain):
    """AMT interpreter: threshold the classifier's own saliency maps into a binary mask.

    On top of the hparams of :class:`InterpreterBrain` it reads ``quantile`` (per-sample
    threshold of the saliency, 0.9 keeps 10 % of the bins) and ``saliency_options`` (kwargs of
    the backbone's ``saliency``: FocalNet ``stages`` / ``aggregation``, ViT ``layers`` /
    ``method``). No training: the interpreter loss is zero. The published overlap test is
    :func:`audio_interpretability.brains.evaluation.evaluate_overlap` (any interpreter).

    Example
    -------
    >>> import tempfile
    >>> from audio_interpretability.models.focalnet import FocalNet
    >>> brain = InterpreterESC50Brain.from_backbone(
    ...     FocalNet.from_config("tiny-cpu"), n_classes=3, output_folder=tempfile.mkdtemp(),
    ...     saliency_options={"stages": [-1], "aggregation": "mean"},
    ... )
    >>> X_int, mask, phase, X = brain.interpret_computation_steps(torch.randn(2, 16000))
    >>> mask.shape, round(mask.mean().item(), 2)
    (torch.Size([2, 87, 513]), 0.1)
    """

    needs_maps = True

    @classmethod
    def from_backbone(
        cls,
        backbone,
        n_classes: int,
        output_folder: str,
        quantile: float = 0.9,
        saliency_options: dict | None = None,
        random_baseline: bool = False,
        sample_rate: int = 16000,
        run_opts: dict | None = None,
    ) -> InterpreterESC50Brain:
        """An AMT brain around a backbone (any :class:`~audio_interpretability.models.base.
        Backbone` with ``saliency``) and a cosine head, without a YAML: the classifier keeps
        the weights it has (no checkpoint is loaded), no noise, nothing saved.

        Arguments
        ---------
        backbone : torch.nn.Module
            The classifier's backbone (e.g. ``FocalNet``, ``ViT``).
        n_classes : int
            Classes of the cosine head.
        output_folder : str
            Where the log goes.
        quantile : float
            Per-sample threshold of the saliency (0.9 keeps 10 % of the bins).
        saliency_options : dict, optional
            Keyword arguments of ``backbone.saliency``.
        random_baseline : bool
            Also score the random and swapped masks outside training.
        sample_rate : int
            Of the front-end.
        run_opts : dict, optional
            SpeechBrain run options (default ``{"device": "cpu"}``).
        """
        import os

        from speechbrain.utils.train_logger import FileTrainLogger

        from audio_interpretability.features import Frontend
        from audio_interpretability.models import AudioClassifier, CosineHead

        hparams = {
            "frontend": Frontend(sample_rate=sample_rate),
            "model": AudioClassifier(backbone, CosineHead(backbone.embedding_dim, n_classes)),
            "embedding_model_path": None,
            "classifier_model_path": None,
            "output_folder": str(output_folder),
            "seed": 0,
            "save_interpretations": False,
            "n_saved_interpretations": 0,
            "add_wham_noise": False,
            "wham_folder": None,
            "wham_split": "tt",
            "wham_snr_db": 0.0,
            "random_baseline": random_baseline,
            "loc_threshold": 0.5,
            "train_logger": FileTrainLogger(os.path.join(str(output_folder), "log.txt")),
            "quantile": quantile,
            "saliency_options": dict(saliency_options or {}),
        }
        return cls(modules={}, hparams=hparams, run_opts=run_opts or {"device": "cpu"})

    def make_mask(self, spec: Spectrogram, clf: ClassifierOutput) -> MaskOutput:
        """Backbone saliency -> resized to (frames, bins) -> per-sample quantile mask.

        Returns
        -------
        MaskOutput
            ``mask`` (B, frames, bins) of 0 and 1, and ``extras["saliency"]`` the resized
            saliency min-max normalised to [0, 1] per sample.
        """
        saliency = self.hparams.model.embedding_model.saliency(
            clf.maps, **self.hparams.saliency_options
        )  # (B, h, w), (time, frequency)
        frames, bins = spec.X.shape[1], spec.X.shape[2]
        saliency = image_to_spectrogram(saliency.float(), frames, bins)  # (B, frames, bins)
        mask = quantile_mask(saliency, self.hparams.quantile).to(spec.X.dtype)
        return MaskOutput(mask=mask, extras={"saliency": normalize_per_sample(saliency)})

    def extra_metrics(self, out, batch, stage) -> dict:
        """``mask_fraction``: the fraction of bins the mask keeps (B,), ~ 1 - quantile."""
        return {"mask_fraction": out.mask.float().reshape(out.mask.shape[0], -1).mean(dim=1)}
