"""PIQ: Posthoc Interpretation via Quantization (Paissan, Subakan, Ravanelli, 2023).

A network ``psi`` (hparam ``psi_model``: SpeechBrain's ``VectorQuantizedPSI_Audio`` and its
FocalNet / ViT variants, ``speechbrain.lobes.models.PIQ``) reads the frozen classifier's last
hidden map ``h`` (B, D, h, w) (see :mod:`audio_interpretability.models.piq_hidden`), and,
with ``use_vq`` (published default)::

    hcat   = down(adapter(h))                      (B, D, h/2, w/2)   ResBlock + stride-2 conv
    z_q    = codebook[argmin_k ||hcat - e_k||]     the nearest of the K codes that belong to
                                                   the predicted class y = argmax f(X)
                                                   (class partitioning: K / C codes per class)
    xhat   = decoder(up(z_q))[:, 0]                (B, T', F') straight-through gradient
    M      = sigmoid(xhat)                         (use_mask_output, published default)

Without ``use_vq`` the decoder reads ``h`` directly (``psi.decoder(h)``, no adapter). The
interpretation is ``X_int = M * X`` (log1p magnitude domain), listened to with X's phase.
With ``use_mask_output: False`` the published recipe uses ``xhat = softplus(.)`` as a
reconstruction of X and the binary mask ``M = xhat > mask_th * max(xhat)`` (max over the
batch); ``recipe_utils`` refuses that value for every recipe, so it is reachable only by
building the Brain directly (tests).

The objective is the published ``compute_objectives`` (SpeechBrain
``recipes/ESC50/interpret/train_piq.py``), term for term (:func:`piq_loss`)::

    target = 1[X > mask_th * max_{t,k} X]          (per clip, over the frames M covers)
    rec    = mean_{b,t,k} -target log(M + 1e-10) - (1 - target) log(1 - M + 1e-10)
             (use_mask_output False: mean (X - xhat)^2)
    loss   = rec_loss_coef * rec + MSE(z_q, sg(hcat)) + MSE(hcat, sg(z_q))       (use_vq)

There is no classifier-guided term: the published ``loss_fid`` is 0, and the masked-in /
masked-out classifier passes only feed the metrics. The classifier's decision enters through
the class partition of the codebook.

Alignment of the decoder output with X (``mask_alignment``): ``crop`` (published) keeps the
decoder's frames and needs its bins to be X's: X is cropped to the decoder's frames when
they are fewer (conv2d decoder: 417 of 431 frames for 5 s clips), the decoder's extra frames
are dropped when they are more (the published ``xhat * X[:, :Tmax]`` crashes there; FocalNet
/ ViT decoders give exactly (431, 513) at 5 s); ``resize`` (ours) interpolates the decoder
output (before the sigmoid) bilinearly to X's (frames, bins), needed by the CNN14 hidden
map (block 6: a (T/32, 2)-sized map decodes to (16 T/32 + 1, 33)) and by tiny test models.

The SpeechBrain classes are used as they are (state dicts are the published layout; the
released ``psi_model.ckpt`` of the published runs load strictly through
``pretrained_interpreter``). ``numclasses`` is passed the class count (published: the
default 50 = ``out_n_neurons``).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import speechbrain as sb
import torch
import torch.nn.functional as F

from audio_interpretability.brains.interpreter import Interpretation, MaskOutput
from audio_interpretability.brains.trainable import TrainableInterpreterBrain
from audio_interpretability.features import Spectrogram
from audio_interpretability.models.base import ClassifierOutput

#: ``mask_alignment`` hparam: the decoder's frames (published crop) or X's grid (resize).
MASK_ALIGNMENTS = ("crop", "resize")
#: The published ``eps`` inside the logarithms of the reconstruction loss.
EPS = 1e-10

__all__ = ["MASK_ALIGNMENTS", "PIQ", "align_decoder_output", "piq_loss", "reconstruction_target"]


def reconstruction_target(X: torch.Tensor, mask_th: float) -> torch.Tensor:
    """Binary target of the published reconstruction loss: ``1[X > mask_th * max_{t,k} X]``.

    Arguments
    ---------
    X : torch.Tensor
        (B, frames, bins) log1p magnitude.
    mask_th : float
        Fraction of each clip's maximum.

    Returns
    -------
    torch.Tensor
        (B, frames, bins) float 0/1.

    Example
    -------
    >>> reconstruction_target(torch.tensor([[[1.0, 0.2], [0.5, 0.3]]]), 0.35)
    tensor([[[1., 0.],
             [1., 0.]]])
    """
    peak = X.amax(dim=-1, keepdim=True).amax(dim=-2, keepdim=True)  # (B, 1, 1)
    return (X > peak * float(mask_th)).float()


def piq_loss(
    xhat: torch.Tensor,
    X: torch.Tensor,
    hcat: torch.Tensor | None = None,
    z_q_x: torch.Tensor | None = None,
    *,
    rec_loss_coef: float = 1.0,
    mask_th: float = 0.35,
    use_mask_output: bool = True,
    use_vq: bool = True,
) -> torch.Tensor:
    """The published PIQ objective of one batch (see the module docstring).

    Arguments
    ---------
    xhat : torch.Tensor
        (B, T', bins) activated decoder output: ``sigmoid`` (``use_mask_output``) or
        ``softplus``; T' <= frames.
    X : torch.Tensor
        (B, frames, bins) log1p magnitude of the input (cropped to T' frames here).
    hcat, z_q_x : torch.Tensor, optional
        (B, D, h, w) adapted hidden map and its quantisation (``use_vq``).
    rec_loss_coef, mask_th : float
        As the published hparams.
    use_mask_output, use_vq : bool
        As the published hparams.

    Returns
    -------
    torch.Tensor
        0-d loss.

    Example
    -------
    >>> X = torch.tensor([[[2.0, 0.0]]])
    >>> xhat = torch.tensor([[[0.5, 0.5]]])
    >>> round(piq_loss(xhat, X, use_vq=False).item(), 4)  # BCE of 0.5: log 2
    0.6931
    """
    X = X[:, : xhat.shape[1]]  # (B, T', bins)
    if use_mask_output:
        target = reconstruction_target(X, mask_th)
        rec = (-target * torch.log(xhat + EPS) - (1 - target) * torch.log(1 - xhat + EPS)).mean()
    else:
        rec = (X - xhat).pow(2).mean()
    loss = float(rec_loss_coef) * rec
    if use_vq:
        if hcat is None or z_q_x is None:
            raise ValueError("use_vq is True: piq_loss needs hcat and z_q_x")
        loss = loss + F.mse_loss(z_q_x, hcat.detach()) + F.mse_loss(hcat, z_q_x.detach())
    return loss


def align_decoder_output(
    xhat: torch.Tensor, frames: int, bins: int, mask_alignment: str = "crop"
) -> torch.Tensor:
    """Align a (B, T', F') decoder output with X's (frames, bins) grid.

    ``crop``: F' must be ``bins``; frames beyond X's are dropped (fewer stay: X is cropped to
    them). ``resize``: bilinear interpolation to (frames, bins).

    Example
    -------
    >>> align_decoder_output(torch.zeros(2, 33, 33), 87, 513, "resize").shape
    torch.Size([2, 87, 513])
    >>> align_decoder_output(torch.zeros(2, 90, 513), 87, 513, "crop").shape
    torch.Size([2, 87, 513])
    """
    if mask_alignment not in MASK_ALIGNMENTS:
        raise ValueError(
            f"unknown mask_alignment {mask_alignment!r}; use one of {', '.join(MASK_ALIGNMENTS)}"
        )
    if mask_alignment == "resize":
        if tuple(xhat.shape[1:]) == (frames, bins):
            return xhat
        return F.interpolate(
            xhat.unsqueeze(1), size=(frames, bins), mode="bilinear", align_corners=False
        ).squeeze(1)
    if xhat.shape[2] != bins:
        raise ValueError(
            f"the PIQ decoder gave {xhat.shape[2]} frequency bins but X has {bins}: "
            "pass --mask_alignment resize (the decoder output is interpolated to X's grid)"
        )
    return xhat[:, :frames]


class PIQ(TrainableInterpreterBrain):
    """PIQ interpreter of a frozen classifier (see the module docstring).

    Hparams of the method (published names): ``use_vq``, ``rec_loss_coef``,
    ``use_mask_output``, ``mask_th``, ``K`` (codebook size, given to ``psi_model``); ours:
    ``hidden_map`` (the :class:`~audio_interpretability.models.piq_hidden.HiddenMapReader`
    giving the classifier's hidden map) and ``mask_alignment`` (``crop`` | ``resize``). The
    life cycle (load / export ``psi_model.ckpt``, best checkpoint, ``lr_annealing`` on
    ``-fid_in``, ``interpret_period``) is :class:`TrainableInterpreterBrain`'s.

    Example
    -------
    >>> PIQ.needs_maps, PIQ.train_script
    (True, 'train_piq.py')
    """

    needs_maps = True
    trains_on_masked_passes = False  # the published loss reads no masked pass
    train_script = "train_piq.py"

    required_hparams = TrainableInterpreterBrain.required_hparams + (
        "use_vq",
        "rec_loss_coef",
        "use_mask_output",
        "mask_th",
        "K",
        "hidden_map",
        "mask_alignment",
    )

    def check_options(self) -> None:
        """Fail at start-up on options that would only break later."""
        if self.hparams.mask_alignment not in MASK_ALIGNMENTS:
            raise ValueError(
                f"unknown mask_alignment {self.hparams.mask_alignment!r}; pass "
                "--mask_alignment crop (published) or --mask_alignment resize"
            )
        if not 0.0 <= float(self.hparams.mask_th) <= 1.0:
            raise ValueError(f"mask_th must be in [0, 1], got {self.hparams.mask_th}")

    @property
    def crops_frames(self) -> bool:
        """``mask_alignment: crop`` (published): X is cropped to the decoder's frames."""
        return self.hparams.mask_alignment == "crop"

    def classifier_forward(self, X: torch.Tensor, return_maps: bool = False) -> ClassifierOutput:
        """Frozen classifier; with ``return_maps`` the maps are ``(hcat,)``, the hidden map
        PIQ decodes (the YAML's ``hidden_map`` reader), from the same pass as the logits."""
        if return_maps:
            return self.hparams.hidden_map(self.hparams.model, X)
        return super().classifier_forward(X)

    def make_mask(self, spec: Spectrogram, clf: ClassifierOutput) -> MaskOutput:
        """psi on the hidden map, conditioned on the predicted class -> mask (B, frames, bins).

        Extras: ``xhat`` (the activated decoder output, aligned like the mask) and, with
        ``use_vq``, ``hcat`` / ``z_q_x`` (B, D, h, w) for the VQ and commitment terms.
        """
        hidden = clf.maps[0]  # (B, D, h, w)
        labels = clf.logits.argmax(dim=-1)  # (B,) the classifier's decision
        psi = self.modules.psi
        extras = {}
        if self.hparams.use_vq:
            xhat, hcat, z_q_x = psi(hidden, labels)  # (B, 1, T', F'), 2 x (B, D, h', w')
            extras.update(hcat=hcat, z_q_x=z_q_x)
        else:
            xhat = psi.decoder(hidden)
        frames, bins = spec.X.shape[1:]
        xhat = align_decoder_output(xhat[:, 0], frames, bins, self.hparams.mask_alignment)
        if self.hparams.use_mask_output:
            xhat = torch.sigmoid(xhat)
            mask = xhat
        else:  # published: binary mask, threshold relative to the batch maximum
            xhat = F.softplus(xhat)
            mask = (xhat > xhat.max() * float(self.hparams.mask_th)).float()
        extras["xhat"] = xhat
        return MaskOutput(mask=mask, extras=extras)

    def interpreter_loss(self, out: Interpretation, batch, stage: sb.Stage) -> torch.Tensor:
        """The published PIQ objective (:func:`piq_loss`) on the interpreted input X."""
        return piq_loss(
            out.extras["xhat"],
            out.X,
            out.extras.get("hcat"),
            out.extras.get("z_q_x"),
            rec_loss_coef=self.hparams.rec_loss_coef,
            mask_th=self.hparams.mask_th,
            use_mask_output=self.hparams.use_mask_output,
            use_vq=self.hparams.use_vq,
        )
