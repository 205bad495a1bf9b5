"""L-MAC: Listenable Maps for Audio Classifiers (Paissan, Ravanelli, Subakan, ICML 2024).

A decoder ``psi`` reads the intermediate maps of a frozen CNN14 and outputs one mask logit per
bin of the linear spectrogram X = log1p|STFT|; the mask is ``M = sigmoid(logits)``. It is
trained so that the masked-in spectrogram ``M * X`` keeps the classifier's decision and the
masked-out one ``(1 - M) * X`` loses it. The default objective is the published one
(SpeechBrain ``recipes/ESC50/interpret/train_lmac.py``), term for term, for a batch of B clips
of which the guidance gate ``g_b`` (fine-tuning only, else 0) lets ``n = sum_b (1 - g_b)``
through to the regulariser::

    y    = argmax f(X)                         (the classifier's decision on the input)
    loss = l_in_w  * CE(f(M * X), y)  -  l_out_w * CE(f((1 - M) * X), y)
         + n * (reg_w_l1 * mean_{b,t,k} |M|  +  reg_w_tv * TV(M))
         + g_w * mean_b g_b * guidance_b                     (fine-tuning)
    TV(M) = (sum (M[b,t,k+1] - M[b,t,k])^2 + sum (M[b,t+1,k] - M[b,t,k])^2) / (2 B)

so the regulariser grows with the batch size (at the published batch size 16, plain training
weighs ``mean|M|`` by ``16 * reg_w_l1 = 6.4``). ``f`` is the frozen CNN14 applied through its
``input_from_spectrogram`` (``log1p(fbank(expm1(.)))``). The base class runs the classifier
once on X (maps included) and once, batched, on ``[M * X ; (1 - M) * X]`` with gradients
flowing to the mask only.

``regularizer: per_sample`` selects the variant of our first version instead: the L1 and TV
terms per clip (``reg_w_l1 * mean_{t,k}|M_b| + reg_w_tv * TVabs(M_b)``, TVabs the mean
absolute difference of neighbouring bins), averaged over the batch with the gated clips
counting 0, i.e. independent of the batch size (``reg_w_l1`` then means B times less).

``out_loss: bounded`` (ours) replaces the masked-out term by ``+ l_out_w * mean_b
-log(1 - p_y(f((1 - M_b) X_b)))``, bounded below by 0. Its gradient with respect to the
masked-out logit of y is ``p_y``: strong while the masked-out clip is still classified as y,
vanishing once it is not. The published ``-CE`` has ``1 - p_y`` there, i.e. it pulls hardest
where y has already lost the clip, and rewards without bound; at our CPU budget the decoder
then learns masks that remove the decision from any clip (docs/LMAC.md "The masked-out
term").

Fine-tuning (``finetuning: True``, from a ``pretrained_interpreter``) gates each clip by
:func:`cross_correlation` between the clean reference spectrogram and ``M * X``
(``g_b = crosscor >= crosscor_th``) and guides the gated clips towards the clean sound::

    binary:  BCE(M, 1[X_clean >= bin_th * max X_clean])
    l2:      mean((M * X - X_clean)^2)

``X_clean`` is, as published, the spectrogram of the clean clip as loaded (peak-normalised,
``guidance_reference: clean``); ``guidance_reference: mixture_scaled`` uses the clean clip
scaled as it is inside the WHAM! mixture instead (the same thing without noise).

Frames: the decoder outputs ``8 (frames // 8) + 1`` frames. As published
(``frame_alignment: crop``), X is cropped to them (5 s clips: 425 of 431 frames), and the
masked passes, the metrics and the listenable output cover those frames;
``frame_alignment: pad`` edge-pads the decoder's frames to X's so that the mask covers the
whole clip. Other differences from the published recipe are in docs/DIFFERENCES.md (e.g. the
checkpoint meta holds plain floats: the published 0-d tensors break recovery with
SpeechBrain 1.1.2).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
from pathlib import Path

import speechbrain as sb
import torch
import torch.nn.functional as F

from audio_interpretability.brains.interpreter import Interpretation, MaskOutput
from audio_interpretability.brains.optimizer_in_backward import OptimizerInBackwardMixin
from audio_interpretability.brains.trainable import PSI_FILE, TrainableInterpreterBrain
from audio_interpretability.distributed import all_reduce_sum
from audio_interpretability.features import Spectrogram
from audio_interpretability.models.base import ClassifierOutput
from audio_interpretability.models.decoders import MAX_FRAME_DIFF

logger = logging.getLogger(__name__)

CROSSCOR_TYPES = ("dotp", "conv")
GUIDELOSS_TYPES = ("binary", "l2")
#: ``regularizer`` hparam: the published batch-summed L1/TV (default) or our per-sample mean.
REGULARIZERS = ("published", "per_sample")
#: ``guidance_reference`` hparam: the clean clip as loaded (published) or scaled into the mixture.
GUIDANCE_REFERENCES = ("clean", "mixture_scaled")
#: ``out_loss`` hparam: the published unbounded masked-out term ``-CE`` or the bounded
#: ``-log(1 - p_y)`` (no reward once the masked-out clip is no longer classified as y).
OUT_LOSSES = ("published", "bounded")
#: ``frame_alignment`` hparam: X cropped to the decoder's frames (published) or the decoder's
#: frames padded to X's (ours).
FRAME_ALIGNMENTS = ("crop", "pad")
#: Subfolder of ``save_folder`` (and ``output_folder``) of a fine-tuning run started in the
#: output folder of its pre-training run (the published fine-tuning command line does that).
FINETUNING_FOLDER = "finetuning"
_EPS = 1e-8

__all__ = [
    "CROSSCOR_TYPES",
    "FRAME_ALIGNMENTS",
    "GUIDELOSS_TYPES",
    "GUIDANCE_REFERENCES",
    "LMAC",
    "PSI_FILE",
    "REGULARIZERS",
    "cross_correlation",
    "crosscor_gate",
    "guidance_loss",
    "lmac_loss",
    "published_tv_loss",
    "total_variation",
]


def _load_dictionary(path) -> torch.Tensor:
    """The (bins, K) dictionary ``relu(W)`` of an ``nmf_decoder.ckpt`` (train_nmf.py), checked."""
    from audio_interpretability.nmf import read_nmf_state

    W = read_nmf_state(path, key="nmf_view_path")["W"]
    if W.dim() != 2 or W.shape[0] != 513:
        raise ValueError(
            f"nmf_view_path {path} is not a 513-bin NMF dictionary; pass the nmf_decoder.ckpt "
            "of a train_nmf.py run with n_fft 1024"
        )
    return torch.relu(W).detach()  # what NMFDecoderAudio.return_W gives


# --------------------------------------------------------------------------------------------
# Pure functions (batched, one value per sample)
# --------------------------------------------------------------------------------------------
def cross_correlation(
    spectrogram: torch.Tensor, template: torch.Tensor, crosscortype: str = "dotp"
) -> torch.Tensor:
    """Normalised cross-correlation of each spectrogram with its template.

    * ``"dotp"``: ``mean(s * t) / (rms(s) * rms(t))`` over (frames, bins); 1 for identical
      inputs, about 0 for independent zero-mean ones (it is not centred: two non-negative
      spectrograms always score above 0).
    * ``"conv"``: zero-mean normalised cross-correlation, computed as in the published recipe
      with a grouped ``conv2d`` of each centred spectrogram with its centred template. For
      inputs of the same size this is one value per sample (the Pearson correlation of the
      bins); for a smaller template it is a (B, frames - t + 1, bins - k + 1) map.

    Computed in float32; a constant (zero-energy) input gives 0, never NaN.

    Arguments
    ---------
    spectrogram : torch.Tensor
        (B, frames, bins), e.g. the clean spectrogram.
    template : torch.Tensor
        (B, frames, bins) (or smaller, for "conv"), e.g. the interpretation ``M * X``.
    crosscortype : str
        "dotp" or "conv".

    Returns
    -------
    torch.Tensor
        (B,) correlations (or a (B, h, w) map, see above).

    Example
    -------
    >>> s = torch.rand(2, 10, 12)
    >>> [round(v, 4) for v in cross_correlation(s, s, "dotp").tolist()]
    [1.0, 1.0]
    >>> [round(v, 4) for v in cross_correlation(s, s, "conv").tolist()]
    [1.0, 1.0]
    """
    if crosscortype not in CROSSCOR_TYPES:
        raise ValueError(
            f"unknown crosscortype {crosscortype!r}; use one of {', '.join(CROSSCOR_TYPES)}"
        )
    if spectrogram.dim() != 3 or template.dim() != 3 or template.shape[0] != spectrogram.shape[0]:
        raise ValueError(
            f"cross_correlation expects (B, frames, bins) spectrogram and template with the "
            f"same batch size, got {tuple(spectrogram.shape)} and {tuple(template.shape)}"
        )
    s, t = spectrogram.float(), template.float()
    if crosscortype == "dotp":
        if s.shape != t.shape:
            raise ValueError(
                f"crosscortype dotp needs inputs of the same shape, got {tuple(s.shape)} and "
                f"{tuple(t.shape)}; crop them to the same frames or use crosscortype conv"
            )
        dotp = (s * t).mean(dim=(1, 2))  # (B,)
        norms = s.pow(2).mean(dim=(1, 2)).sqrt() * t.pow(2).mean(dim=(1, 2)).sqrt()
        return dotp / norms.clamp_min(_EPS)
    if t.shape[1] > s.shape[1] or t.shape[2] > s.shape[2]:
        raise ValueError(
            f"crosscortype conv needs a template no larger than the spectrogram, got "
            f"{tuple(t.shape)} and {tuple(s.shape)}"
        )
    batch = s.shape[0]
    s = s - s.mean(dim=(1, 2), keepdim=True)
    t = t - t.mean(dim=(1, 2), keepdim=True)
    weight = t.unsqueeze(1)  # (B, 1, t, k): one filter per sample
    num = F.conv2d(s.unsqueeze(0), weight, groups=batch)  # (1, B, h, w)
    energy_s = F.conv2d(s.unsqueeze(0).pow(2), torch.ones_like(weight), groups=batch)
    energy_t = t.pow(2).sum(dim=(1, 2)).view(1, batch, 1, 1)
    ncc = (num / (energy_s * energy_t).sqrt().clamp_min(_EPS))[0]  # (B, h, w)
    if ncc.shape[1:] == (1, 1):
        return ncc.reshape(batch)  # (B,)
    return ncc


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Per-sample total variation: mean |difference| of neighbouring bins in time + frequency.

    ``TV(M) = mean_{t,k} |M[t+1, k] - M[t, k]| + mean_{t,k} |M[t, k+1] - M[t, k]|``.

    Arguments
    ---------
    mask : torch.Tensor
        (B, frames, bins) mask.

    Returns
    -------
    torch.Tensor
        (B,) total variation (0 for a constant mask).

    Example
    -------
    >>> total_variation(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]))
    tensor([1.])
    """
    if mask.dim() != 3:
        raise ValueError(f"total_variation expects (B, frames, bins), got {tuple(mask.shape)}")
    d_time = (mask[:, 1:, :] - mask[:, :-1, :]).abs().mean(dim=(1, 2))  # (B,)
    d_freq = (mask[:, :, 1:] - mask[:, :, :-1]).abs().mean(dim=(1, 2))  # (B,)
    return d_time + d_freq


def published_tv_loss(mask: torch.Tensor) -> torch.Tensor:
    """Total variation of a batch of masks as the published ``tv_loss``: one scalar.

    ``(sum (M[b,t,k+1] - M[b,t,k])^2 + sum (M[b,t+1,k] - M[b,t,k])^2) / (2 B)``, summed over
    the whole batch (SpeechBrain ``train_lmac.py``, ``power=2``, ``tv_weight=1``).

    Arguments
    ---------
    mask : torch.Tensor
        (B, frames, bins) masks.

    Returns
    -------
    torch.Tensor
        0-d total variation of the batch.

    Example
    -------
    >>> published_tv_loss(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]))  # (1 + 1) / 2
    tensor(1.)
    """
    if mask.dim() != 3:
        raise ValueError(f"published_tv_loss expects (B, frames, bins), got {tuple(mask.shape)}")
    d_freq = (mask[:, :, :-1] - mask[:, :, 1:]).pow(2).sum()
    d_time = (mask[:, :-1, :] - mask[:, 1:, :]).pow(2).sum()
    return (d_freq + d_time) / (2.0 * mask.shape[0])


def guidance_loss(
    mask_logits: torch.Tensor,
    X: torch.Tensor,
    clean_X: torch.Tensor,
    guidelosstype: str = "binary",
    bin_th: float = 0.35,
) -> torch.Tensor:
    """Per-sample guidance loss of L-MAC fine-tuning (not yet weighted by ``g_w``).

    * ``"binary"``: ``BCE(M, 1[X_clean >= bin_th * max X_clean])``, the max per sample
      (computed from the logits, numerically stable and autocast-safe);
    * ``"l2"``: ``mean((M * X - X_clean)^2)``.

    Arguments
    ---------
    mask_logits : torch.Tensor
        (B, frames, bins) mask logits (``M = sigmoid(mask_logits)``).
    X : torch.Tensor
        (B, frames, bins) spectrogram the mask applies to (noisy input).
    clean_X : torch.Tensor
        (B, frames, bins) clean spectrogram (scaled like the input).
    guidelosstype : str
        "binary" or "l2".
    bin_th : float
        Binarisation threshold relative to the per-sample maximum ("binary").

    Returns
    -------
    torch.Tensor
        (B,) losses.

    Example
    -------
    >>> clean = torch.tensor([[[1.0, 0.0]]])
    >>> logits = torch.tensor([[[20.0, -20.0]]])  # M ~ [1, 0]
    >>> guidance_loss(logits, clean, clean, "binary").item() < 1e-6
    True
    >>> guidance_loss(logits, clean, clean, "l2").item() < 1e-6
    True
    """
    if guidelosstype not in GUIDELOSS_TYPES:
        raise ValueError(
            f"unknown guidelosstype {guidelosstype!r}; use one of {', '.join(GUIDELOSS_TYPES)}"
        )
    logits, X, clean_X = mask_logits.float(), X.float(), clean_X.float()
    if guidelosstype == "binary":
        peak = clean_X.flatten(1).amax(dim=1).view(-1, 1, 1)  # (B, 1, 1)
        target = (clean_X >= bin_th * peak).float()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return bce.mean(dim=(1, 2))
    return (torch.sigmoid(logits) * X - clean_X).pow(2).mean(dim=(1, 2))


@torch.no_grad()
def crosscor_gate(
    clean_X: torch.Tensor, X_int: torch.Tensor, crosscortype: str, crosscor_th: float
) -> torch.Tensor:
    """(B,) bool fine-tuning gate: ``cross_correlation(clean_X, X_int) >= crosscor_th``.

    No gradient flows through the gate (as published: it is a 0/1 weight).

    Example
    -------
    >>> s = torch.rand(2, 5, 4)
    >>> crosscor_gate(s, s, "dotp", 0.6).tolist()
    [True, True]
    """
    return cross_correlation(clean_X, X_int, crosscortype) >= float(crosscor_th)


def bounded_out_loss(logits_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-mean_b log(1 - p_y)``: the masked-out term of ``out_loss: bounded`` (0-d, >= 0).

    ``p_y`` is the softmax probability of the decision ``y`` on the masked-out clip. Computed
    as ``logsumexp_{j != y} z_j - logsumexp_j z``, finite for any logits (also when
    ``p_y`` rounds to 1).

    Example
    -------
    >>> z = torch.tensor([[0.0, 0.0], [50.0, -50.0]])
    >>> bounded_out_loss(z, torch.tensor([0, 1])).item()  # the mean of log 2 and about 0
    0.3465735912322998
    """
    z = logits_out.float()
    others = z.masked_fill(F.one_hot(target, z.shape[-1]).bool(), float("-inf"))
    return (z.logsumexp(dim=-1) - others.logsumexp(dim=-1)).mean()


def lmac_loss(
    logits: torch.Tensor,
    logits_in: torch.Tensor,
    logits_out: torch.Tensor,
    mask_logits: torch.Tensor,
    X: torch.Tensor,
    clean_X: torch.Tensor | None = None,
    *,
    l_in_w: float = 4.0,
    l_out_w: float = 0.2,
    reg_w_l1: float = 0.4,
    reg_w_tv: float = 0.0,
    finetuning: bool = False,
    g_w: float = 4.0,
    crosscor_th: float = 0.6,
    crosscortype: str = "dotp",
    guidelosstype: str = "binary",
    bin_th: float = 0.35,
    regularizer: str = "published",
    out_loss: str = "published",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-MAC objective of one batch (see the module docstring), and the guidance gate.

    Arguments
    ---------
    logits : torch.Tensor
        (B, C) classifier logits on the input (their argmax is the target).
    logits_in, logits_out : torch.Tensor
        (B, C) classifier logits on ``M * X`` and ``(1 - M) * X``.
    mask_logits : torch.Tensor
        (B, frames, bins) decoder output; ``M = sigmoid(mask_logits)``.
    X : torch.Tensor
        (B, frames, bins) the (possibly noisy) input spectrogram the mask applies to.
    clean_X : torch.Tensor, optional
        (B, frames, bins) clean reference spectrogram (fine-tuning; default ``X``).
    l_in_w, l_out_w, reg_w_l1, reg_w_tv, g_w, crosscor_th, bin_th : float
        Loss weights and thresholds, as the published hparams of the same names.
    finetuning : bool
        Add the gated guidance term.
    crosscortype : str
        "dotp" or "conv" (:func:`cross_correlation`).
    guidelosstype : str
        "binary" or "l2" (:func:`guidance_loss`).
    regularizer : str
        "published" (batch-summed, the default) or "per_sample" (see the module docstring).
    out_loss : str
        "published" (``- l_out_w * CE(f((1 - M) X), y)``, unbounded below) or "bounded"
        (``- l_out_w * mean_b log(1 - p_y((1 - M) X))``, 0 once the masked-out clip has lost
        the decision; see the module docstring).

    Returns
    -------
    loss : torch.Tensor
        0-d loss.
    gate : torch.Tensor
        (B,) bool: the clips whose guidance term replaced the regulariser (all False
        without fine-tuning).

    Example
    -------
    >>> logits = torch.tensor([[2.0, 0.0]])
    >>> mask_logits = torch.zeros(1, 4, 3)  # M = 0.5
    >>> loss, gate = lmac_loss(logits, logits, -logits, mask_logits, torch.ones(1, 4, 3),
    ...                        l_in_w=0.0, l_out_w=0.0, reg_w_l1=0.4)
    >>> round(loss.item(), 4), gate.tolist()  # 1 clip * 0.4 * mean|M|
    (0.2, [False])
    """
    if regularizer not in REGULARIZERS:
        raise ValueError(
            f"unknown regularizer {regularizer!r}; use one of {', '.join(REGULARIZERS)}"
        )
    if out_loss not in OUT_LOSSES:
        raise ValueError(f"unknown out_loss {out_loss!r}; use one of {', '.join(OUT_LOSSES)}")
    target = logits.argmax(dim=-1)  # (B,) the classifier's decision
    l_in = F.cross_entropy(logits_in.float(), target)
    if out_loss == "published":
        loss = float(l_in_w) * l_in - float(l_out_w) * F.cross_entropy(logits_out.float(), target)
    else:
        loss = float(l_in_w) * l_in + float(l_out_w) * bounded_out_loss(logits_out, target)
    mask = torch.sigmoid(mask_logits.float())  # (B, frames, bins)
    if finetuning:
        clean_X = X if clean_X is None else clean_X
        gate = crosscor_gate(clean_X, mask * X, crosscortype, crosscor_th)
        guide = guidance_loss(mask_logits, X, clean_X, guidelosstype, float(bin_th))  # (B,)
        loss = loss + float(g_w) * (guide * gate).mean()
    else:
        gate = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    keep = (~gate).float()  # (B,) clips regularised
    if regularizer == "published":
        reg = float(reg_w_l1) * mask.abs().mean()
        if float(reg_w_tv) != 0.0:
            reg = reg + float(reg_w_tv) * published_tv_loss(mask)
        return loss + reg * keep.sum(), gate
    reg = float(reg_w_l1) * mask.abs().mean(dim=(1, 2))  # (B,)
    if float(reg_w_tv) != 0.0:
        reg = reg + float(reg_w_tv) * total_variation(mask)
    return loss + (reg * keep).mean(), gate


# --------------------------------------------------------------------------------------------
# The Brain
# --------------------------------------------------------------------------------------------
class LMAC(OptimizerInBackwardMixin, TrainableInterpreterBrain):
    """L-MAC interpreter: a trainable decoder on a frozen CNN14 (see the module docstring).

    ``psi_model`` is the :class:`~audio_interpretability.models.decoders.CNN14Decoder` (also
    ``modules["psi"]``, the only trainable module). Its life cycle (load / export
    ``psi_model.ckpt``, best checkpoint by ``ckpt_key``, ``lr_annealing`` on ``-fid_in``,
    resume guard, ``interpret_period``) is :class:`TrainableInterpreterBrain`'s. Hparams of
    the method: ``l_in_w``, ``l_out_w``, ``reg_w_l1``, ``reg_w_tv``, ``regularizer``,
    ``finetuning``, ``g_w``, ``crosscor_th``, ``crosscortype``, ``guidelosstype``, ``bin_th``,
    ``guidance_reference``. Fine-tuning started in the pre-training run's folder keeps its
    checkpoints and decoder apart, in ``finetuning/`` subfolders. ``optimizer_in_backward:
    True`` (opt-in, with ``--max_grad_norm 0``) steps each decoder parameter inside the
    backward pass and frees its gradient at once (``brains/optimizer_in_backward.py``).

    Arguments
    ---------
    *args, **kwargs
        As :class:`InterpreterBrain`.

    Example
    -------
    >>> LMAC.needs_maps
    True
    """

    needs_maps = True

    required_hparams = TrainableInterpreterBrain.required_hparams + (
        "l_in_w",
        "l_out_w",
        "reg_w_l1",
        "reg_w_tv",
        "finetuning",
        "g_w",
        "crosscor_th",
        "crosscortype",
        "guidelosstype",
        "bin_th",
        "regularizer",
        "out_loss",
        "guidance_reference",
        "frame_alignment",
        "nmf_view_path",
        "nmf_view_components",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reset_gate_counts()
        self.nmf_view = None  # (bins, K) dictionary of the NMF view of saved figures
        if self.hparams.nmf_view_path:
            self.nmf_view = _load_dictionary(self.hparams.nmf_view_path)

    def interpretation_panels(self, X, mask, extras, index, truths=None):
        """The base panels plus, with ``nmf_view_path``, the interpretation seen through an NMF
        dictionary: ``M * X`` decomposed on its atoms (:func:`audio_interpretability.nmf.decompose`)
        and rebuilt from the ``nmf_view_components`` most active ones."""
        panels = super().interpretation_panels(X, mask, extras, index, truths)
        if self.nmf_view is not None:
            from audio_interpretability.nmf import decompose

            X_int = (mask[index] * X[index]).detach().float().cpu()[None]  # (1, frames, bins)
            H = decompose(X_int, self.nmf_view, n_iter=100).H  # (1, K, frames)
            k = min(int(self.hparams.nmf_view_components), H.shape[1])
            top = H[0].sum(dim=1).topk(k).indices  # the most active atoms
            view = (self.nmf_view[:, top] @ H[0, top]).T  # (frames, bins)
            panels.append((f"M*X from its top {k} NMF atoms", view))
        return panels

    # ------------------------------------------------------------------ set-up
    def check_options(self) -> None:
        """Fail at start-up on options that would only break later."""
        if self.hparams.crosscortype not in CROSSCOR_TYPES:
            raise ValueError(
                f"unknown crosscortype {self.hparams.crosscortype!r}; pass --crosscortype dotp or "
                "--crosscortype conv"
            )
        if self.hparams.guidelosstype not in GUIDELOSS_TYPES:
            raise ValueError(
                f"unknown guidelosstype {self.hparams.guidelosstype!r}; pass --guidelosstype binary or "
                "--guidelosstype l2"
            )
        if self.hparams.regularizer not in REGULARIZERS:
            raise ValueError(
                f"unknown regularizer {self.hparams.regularizer!r}; pass --regularizer published "
                "(the published batch-summed L1/TV) or --regularizer per_sample"
            )
        if self.hparams.out_loss not in OUT_LOSSES:
            raise ValueError(
                f"unknown out_loss {self.hparams.out_loss!r}; pass --out_loss published "
                "(the published unbounded -CE of the masked-out clip) or --out_loss bounded"
            )
        if self.hparams.frame_alignment not in FRAME_ALIGNMENTS:
            raise ValueError(
                f"unknown frame_alignment {self.hparams.frame_alignment!r}; pass "
                "--frame_alignment crop (published: X cropped to the decoder's frames) or "
                "--frame_alignment pad (the mask covers every frame)"
            )
        if self.hparams.guidance_reference not in GUIDANCE_REFERENCES:
            raise ValueError(
                f"unknown guidance_reference {self.hparams.guidance_reference!r}; pass "
                "--guidance_reference clean (published) or --guidance_reference mixture_scaled"
            )
        if self.hparams.finetuning and not self.hparams.pretrained_interpreter:
            raise ValueError(
                "finetuning is True but pretrained_interpreter is not set; pass "
                "--pretrained_interpreter <save_folder>/psi_model.ckpt (written by a first "
                "train_lmac.py run)"
            )
        self.check_optimizer_in_backward()

    def training_stage(self) -> float:
        """0 for pre-training, 1 for fine-tuning (checkpoint meta ``finetuning``)."""
        return float(bool(self.hparams.finetuning))

    def describe_state_mismatch(self, state: dict, own: dict) -> str:
        """Names the decoder sizes of the file and of this YAML."""
        decoder = self.hparams.psi_model
        in_dim, width = state["convt1.weight"].shape[:2]
        return (
            f"a decoder with in_dim={in_dim}, width={width}, but this one has "
            f"in_dim={decoder.in_dim}, width={decoder.width}; pass --decoder_width {width} "
            f"(and the classifier it was trained on, emb_dim {in_dim})"
        )

    # ------------------------------------------------------------------ the method
    @property
    def crops_frames(self) -> bool:
        """``frame_alignment: crop`` (published): X is cropped to the decoder's frames."""
        return self.hparams.frame_alignment == "crop"

    def make_mask(self, spec: Spectrogram, clf: ClassifierOutput) -> MaskOutput:
        """Decoder on the CNN14 maps -> sigmoid mask (B, frames', bins).

        ``frame_alignment: crop`` (published): the decoder's ``frames' = 8 (frames // 8) + 1``
        frames, X then cropped to them by the base (a decoder frame beyond X is dropped);
        ``pad``: the decoder's frames edge-padded (or cropped) to X's, the mask covers the clip.
        """
        logits = self.modules.psi(clf.maps)[:, 0]  # (B, frames', bins)
        frames = spec.X.shape[1]
        target = min(logits.shape[1], frames) if self.crops_frames else frames
        if frames - target > MAX_FRAME_DIFF:
            raise ValueError(
                f"the decoder gave {logits.shape[1]} frames for a {frames}-frame spectrogram: "
                "the maps do not come from this spectrogram"
            )
        logits = self.hparams.psi_model.align_frames(logits, target)  # (B, target, bins)
        return MaskOutput(mask=torch.sigmoid(logits), extras={"mask_logits": logits})

    def crosscor(self, spectrogram: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
        """:func:`cross_correlation` with the ``crosscortype`` hparam: (B,)."""
        return cross_correlation(spectrogram, template, self.hparams.crosscortype)

    def guidance_gate(self, clean_X: torch.Tensor, X_int: torch.Tensor) -> torch.Tensor:
        """(B,) bool: samples whose interpretation correlates with the clean spectrogram.

        ``crosscor(clean_X, X_int) >= crosscor_th`` (no gradient through the gate).
        """
        return crosscor_gate(clean_X, X_int, self.hparams.crosscortype, self.hparams.crosscor_th)

    def clean_reference(self, out: Interpretation) -> torch.Tensor:
        """(B, frames, bins) clean spectrogram the fine-tuning gate and guidance compare with.

        Without noise it is the input itself. With WHAM! noise it is, as published, the clean
        clip as loaded (``guidance_reference: clean``), or the clean clip scaled as it is in
        the mixture (``mixture_scaled``).
        """
        if "clean_X" in out.extras:
            return out.extras["clean_X"]
        if "clean_wavs" not in out.extras:
            return out.X  # no noise mixed in: X is the clean input
        wavs = out.extras["clean_wavs"]
        if self.hparams.guidance_reference == "mixture_scaled":
            wavs = wavs * out.extras["clean_gain"][:, None]
        return self.preprocess(wavs).X[:, : out.X.shape[1]]  # the frames the mask covers

    def interpreter_loss(self, out: Interpretation, batch, stage: sb.Stage) -> torch.Tensor:
        """The L-MAC objective of the batch (:func:`lmac_loss`, see the module docstring)."""
        finetuning = bool(self.hparams.finetuning)
        loss, gate = lmac_loss(
            out.logits,
            out.logits_in,
            out.logits_out,
            out.extras["mask_logits"],
            out.X,
            self.clean_reference(out) if finetuning else None,
            l_in_w=self.hparams.l_in_w,
            l_out_w=self.hparams.l_out_w,
            reg_w_l1=self.hparams.reg_w_l1,
            reg_w_tv=self.hparams.reg_w_tv,
            finetuning=finetuning,
            g_w=self.hparams.g_w,
            crosscor_th=self.hparams.crosscor_th,
            crosscortype=self.hparams.crosscortype,
            guidelosstype=self.hparams.guidelosstype,
            bin_th=self.hparams.bin_th,
            regularizer=self.hparams.regularizer,
            out_loss=self.hparams.out_loss,
        )
        if finetuning:
            self._gate_passed += gate.sum().detach()
            self._gate_total += gate.numel()
        return loss

    # ------------------------------------------------------------------ stage hooks
    def _reset_gate_counts(self) -> None:
        self._gate_passed = torch.zeros((), dtype=torch.long, device=self.device)
        self._gate_total = 0

    def prepare_checkpoint_folder(self) -> None:
        """Fine-tuning in the pre-training run's folder (the published fine-tuning command
        reuses it): keep the pre-training checkpoints and decoder, fine-tune in the
        ``finetuning/`` subfolder (test metrics then go to ``<output_folder>/finetuning``)."""
        if self.training_stage() and self.holds_stage(0.0):
            folder = Path(self.hparams.save_folder) / FINETUNING_FOLDER
            logger.info(
                "%s holds the pre-training checkpoints; fine-tuning checkpoints and the "
                "fine-tuned psi_model.ckpt go to %s",
                self.checkpointer.checkpoints_dir,
                folder,
            )
            self.checkpointer.checkpoints_dir = folder
            folder.mkdir(parents=True, exist_ok=True)

    def on_stage_start(self, stage, epoch=None):
        """Base bookkeeping plus a fresh count of the samples passing the guidance gate."""
        super().on_stage_start(stage, epoch)
        self._reset_gate_counts()

    def summarize_stage(self, stage, stage_loss) -> dict:
        """Base summary plus, when fine-tuning, ``gate_passed`` and ``gate_fraction``."""
        summary = super().summarize_stage(stage, stage_loss)
        if self.hparams.finetuning:  # counted over every process under DDP
            counts = torch.tensor([float(self._gate_passed), float(self._gate_total)])
            passed, total = all_reduce_sum(counts.double()).tolist()
            if total > 0:
                summary["gate_passed"] = passed
                summary["gate_fraction"] = passed / total
        return summary
