"""L2I: Listen to Interpret (Parekh, Parekh, Essid, Richard, Subakan, NeurIPS 2022).

A network ``psi`` reads the intermediate maps of a frozen classifier and outputs the time
activations ``H`` of a fixed, pre-trained NMF dictionary ``W`` of the linear spectrogram
X = log1p|STFT|. A linear classifier ``theta`` on the activations is trained to agree with the
frozen classifier, and ``W H`` to reconstruct X. The interpretation of a decision keeps the
NMF components that ``theta`` finds relevant for the predicted class. As published
(SpeechBrain ``recipes/ESC50/interpret/train_l2i.py``), for a batch of B clips::

    maps = classifier maps on X                    (CNN14: the blocks 6, 5, 4, 3 outputs)
    H    = psi(maps)[:, :, :frames]                (B, K, frames)   NMF activations (>= 0)
    W    = relu(nmf_decoder.W)                     (n_freq, K)      frozen NMF dictionary
    Xhat = W H                                     (B, n_freq, frames)
    p    = theta(H) = softmax(V (H a))             (B, C)   a: (frames,) "hard attention" pooling
    loss = alpha * mean((Xhat^T - X)^2)                                   NMF reconstruction
         + beta  * mean |H|                                               L1 on activations
         + mean_{b,c} softmax(f(X) / classifier_temp)_{b,c} * (-log p_{b,c})   fidelity of theta

(every mean over all elements, as published: the fidelity term is a cross entropy divided by
the number of classes C). ``f(X)`` are the frozen classifier's logits; ``psi`` and ``theta``
are trained, the classifier and ``W`` are not. The interpretation of clip b, class
``c = argmax f(X_b)``::

    z_b   = H_b a                                  (K,)   time-pooled activations
    r_b   = V[c] * z_b / max_k |V[c] * z_b|        (K,)   relevance of each component
    L_b   = {k : r_b[k] > relevance_th}
    M_b   = W[:, L_b] H_b[L_b] / (W H_b + 1e-10)   (frames, n_freq)   mask in [0, 1]

and the interpretation spectrogram is ``M * X`` (the published ``X_int``), inverted with the
input phase. The published code loops over the clips; here the same computation is batched.

Shapes and alignment. The mask has ``psi``'s frames; it is cropped to X's frames (published:
``psi_out[:, :, :frames]``) and, when ``psi`` gives fewer frames (the published Conv2d
``PsiOptimized`` gives 417 for 431), zero-padded at the end (published ``F.pad``): the mask
always has X's shape (B, frames, bins). ``theta`` pools over a fixed number of frames
(``Theta(T=...)``, hparam ``theta_frames``: 431 for 5 s clips); activations of another length
are cropped or zero-padded to it before ``theta`` (the published code only runs on 5 s clips).

Where SpeechBrain's classes are used and where not:

* ``theta`` is ``speechbrain.lobes.models.L2I.Theta`` and the dictionary
  ``speechbrain.lobes.models.L2I.NMFDecoderAudio``, as published; ``psi`` for the Conv2d
  classifier is ``speechbrain.lobes.models.L2I.PsiOptimized``.
* ``psi`` for CNN14 is :class:`CNN14PsiStft2d`, a subclass of the published
  ``CNN14PSI_stft_2d`` with the same parameters (its state dicts load both ways). The
  published decoder only fits clips whose frame count modulo 32 is in [8, 15] (5 s at
  16 kHz: 431 frames, which it does); for other lengths (our 1 s test clips, single files
  of any length) this subclass zero-pads the CNN14 maps in time to the next size it fits and
  leaves the published sizes untouched.

Checkpoints: the checkpointer keeps ``psi_model`` and ``theta`` (published recoverables); the
best ones are exported as ``psi_model.ckpt`` and ``theta.ckpt`` side by side.
``pretrained_interpreter`` names ``psi_model.ckpt`` (or its folder) as published; ``theta`` is
read from ``pretrained_theta`` (null: the ``theta.ckpt`` next to it). The published eval.py
loads ``psi_model`` only and leaves ``theta`` (hence the relevances) at its random
initialisation; here a missing ``theta.ckpt`` is an error.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.lobes.models.L2I import CNN14PSI_stft_2d

from audio_interpretability.brains.interpreter import Interpretation, MaskOutput
from audio_interpretability.brains.trainable import PSI_FILE, TrainableInterpreterBrain
from audio_interpretability.features import Spectrogram
from audio_interpretability.models.base import ClassifierOutput
from audio_interpretability.nmf import component_mask, load_nmf_decoder

logger = logging.getLogger(__name__)

#: File name of the exported ``theta`` (next to ``psi_model.ckpt``).
THETA_FILE = "theta.ckpt"
#: The published denominator guard of the mask ``W_L H_L / (W H + EPS)``.
EPS = 1e-10

__all__ = [
    "CNN14PsiStft2d",
    "EPS",
    "L2I",
    "THETA_FILE",
    "fit_frames",
    "l2i_loss",
    "nmf_activations",
    "psi_input",
    "relevance",
]


# --------------------------------------------------------------------------------------------
# psi for CNN14 on clips of any length
# --------------------------------------------------------------------------------------------
class CNN14PsiStft2d(CNN14PSI_stft_2d):
    """SpeechBrain's ``CNN14PSI_stft_2d`` for CNN14 maps of any number of frames.

    The published decoder adds upsampled maps of blocks 6/5 (``n`` frames), 4 (``2n``) and
    3 (``4n + 1``); CNN14 gives ``(T // 32, T // 32, T // 16, T // 8)`` frames, which fit only
    when ``T % 32`` is in [8, 15] (5 s clips: 431 frames). Other lengths are zero-padded in
    time to the smallest ``n`` that holds every map; the output then has ``32 n + 15 >= T``
    frames (the caller crops them to T). Same parameters (state dict) as the published class.

    Arguments
    ---------
    dim : int
        Channels of CNN14's last block (``emb_dim``; block 5 has ``dim // 2``, block 4
        ``dim // 4``, block 3 ``dim // 8``).
    K : int
        Number of NMF components (output channels).

    Example
    -------
    >>> from audio_interpretability.models.cnn14 import Cnn14
    >>> cnn = Cnn14(mel_bins=80, emb_dim=64, base_channels=2).eval()
    >>> psi = CNN14PsiStft2d(dim=64, K=4)
    >>> psi(cnn(torch.rand(2, 87, 80), return_maps=True).maps).shape  # 1 s: 87 frames
    torch.Size([2, 4, 111])
    >>> psi(cnn(torch.rand(2, 431, 80), return_maps=True).maps).shape  # 5 s: as published
    torch.Size([2, 4, 431])
    """

    def forward(self, hs, labels=None):
        """(B, K, 32 n + 15) activations of the maps ``(block6, block5, block4, block3)``."""
        frames = [h.shape[2] for h in hs[:4]]
        n = max(frames[0], frames[1], -(-frames[2] // 2), -(-(frames[3] - 1) // 4))
        targets = (n, n, 2 * n, 4 * n + 1)
        hs = [F.pad(h, (0, 0, 0, t - h.shape[2])) for h, t in zip(hs[:4], targets)]
        return super().forward(hs, labels)


# --------------------------------------------------------------------------------------------
# Pure functions (batched)
# --------------------------------------------------------------------------------------------
def nmf_activations(psi_out) -> torch.Tensor:
    """(B, K, frames) activations from ``psi``'s output, as the published recipe reads it.

    ``CNN14PSI_stft_2d`` returns them as they are; ``PsiOptimized`` returns a tuple whose first
    element is (B, 1, frames, K) (published: ``psi_out[0].squeeze(1).permute(0, 2, 1)``).

    Example
    -------
    >>> nmf_activations((torch.ones(2, 1, 7, 3), None)).shape
    torch.Size([2, 3, 7])
    """
    if isinstance(psi_out, tuple):
        return psi_out[0].squeeze(1).permute(0, 2, 1)
    return psi_out


def psi_input(maps: tuple):
    """What ``psi`` reads, as published: the classifier's hidden representations ``f_I``.

    CNN14 (``return_reps``) hands its tuple of block outputs to ``psi``; a classifier with a
    single representation (the Conv2d encoder) hands the tensor itself.

    Example
    -------
    >>> x = torch.zeros(1)
    >>> psi_input((x,)) is x, psi_input((x, x)) == (x, x)
    (True, True)
    """
    return maps[0] if len(maps) == 1 else maps


def fit_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Crop or zero-pad the last (time) dimension of ``x`` to ``frames``.

    Example
    -------
    >>> fit_frames(torch.ones(1, 2, 3), 5).tolist()
    [[[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0]]]
    >>> fit_frames(torch.ones(1, 2, 3), 2).shape
    torch.Size([1, 2, 2])
    """
    if x.shape[-1] >= frames:
        return x[..., :frames]
    return F.pad(x, (0, frames - x.shape[-1]))


def l2i_loss(
    logits: torch.Tensor,
    theta_out: torch.Tensor,
    reconstruction: torch.Tensor,
    X: torch.Tensor,
    activations: torch.Tensor,
    *,
    alpha: float = 10.0,
    beta: float = 0.8,
    classifier_temp: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """The published L2I objective of one batch (see the module docstring), and its terms.

    Arguments
    ---------
    logits : torch.Tensor
        (B, C) frozen classifier logits on the input.
    theta_out : torch.Tensor
        (B, C) class probabilities of ``theta`` (it ends with a softmax).
    reconstruction : torch.Tensor
        (B, frames', n_freq) NMF reconstruction ``(W H)^T``.
    X : torch.Tensor
        (B, frames, n_freq) log1p magnitude spectrogram, frames >= frames' (cropped to them).
    activations : torch.Tensor
        (B, K, frames') NMF activations H.
    alpha, beta, classifier_temp : float
        Published hparams: NMF term weight, L1 weight, temperature of the classifier's
        soft labels.

    Returns
    -------
    loss : torch.Tensor
        0-d loss ``alpha * recons + beta * l1 + fid``.
    terms : dict
        Per-sample (B,) terms: ``recons_err`` (mean squared error), ``reg_loss``
        (``beta * mean|H|``), ``fid_loss`` (the fidelity term of each clip); their batch means
        are the published terms.

    Example
    -------
    >>> B, C, K, T, F = 2, 3, 4, 5, 6
    >>> theta_out = torch.full((B, C), 1 / C)
    >>> loss, terms = l2i_loss(torch.zeros(B, C), theta_out, torch.zeros(B, T, F),
    ...                        torch.zeros(B, T, F), torch.ones(B, K, T), beta=0.5)
    >>> round(loss.item(), 4)  # 0.5 * 1 + mean(1/3 * log 3)
    0.8662
    """
    recon_frames = reconstruction.shape[1]
    X = X[:, :recon_frames]  # published: X_stft_logpower[:, : reconstructions.shape[1], :]
    recons = (reconstruction.float() - X.float()).pow(2)  # (B, frames', F)
    reg = activations.float().abs()  # (B, K, frames')
    soft = F.softmax(logits.float() / float(classifier_temp), dim=1)  # (B, C)
    fid = soft * -torch.log(theta_out.float())  # (B, C)
    loss = float(alpha) * recons.mean() + float(beta) * reg.mean() + fid.mean()
    terms = {
        "recons_err": recons.mean(dim=(1, 2)).detach(),
        "reg_loss": float(beta) * reg.mean(dim=(1, 2)).detach(),
        "fid_loss": fid.mean(dim=1).detach(),
    }
    return loss, terms


def relevance(theta: torch.nn.Module, activations: torch.Tensor, pred: torch.Tensor):
    """(B, K) relevance of each NMF component for the predicted class (published ``r_c_x``).

    ``r = V[c] * (H a) / max_k |V[c] * (H a)|`` with ``a`` = ``theta.hard_att`` (time
    pooling), ``V`` = ``theta.classifier[0].weight`` (C, K), ``c`` = ``pred``.

    Arguments
    ---------
    theta : speechbrain.lobes.models.L2I.Theta
        The trained classifier on activations.
    activations : torch.Tensor
        (B, K, T) activations, T = ``theta.hard_att.in_features``.
    pred : torch.Tensor
        (B,) class of each clip to interpret (the classifier's decision).

    Example
    -------
    >>> from speechbrain.lobes.models.L2I import Theta
    >>> r = relevance(Theta(n_comp=4, T=5, num_classes=3), torch.rand(2, 4, 5), torch.tensor([0, 2]))
    >>> r.shape, bool(r.abs().amax(dim=1).allclose(torch.ones(2)))
    (torch.Size([2, 4]), True)
    """
    z = theta.hard_att(activations).squeeze(-1)  # (B, K)
    weight = theta.classifier[0].weight[pred]  # (B, K)
    contribution = weight * z
    return contribution / contribution.abs().amax(dim=1, keepdim=True)


def _save_atomic(state: dict, path: Path) -> None:
    from audio_interpretability.checkpointing import apply_umask

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".l2i_", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        apply_umask(tmp)  # mkstemp creates 0600: a shared interpreter must be readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_state(path: str, module: torch.nn.Module, what: str, hint: str) -> None:
    """Load a state dict strictly into ``module``, with errors that say what to pass."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist; {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip / EOF errors all mean "not a checkpoint"
        raise ValueError(f"{what} {path} is not a torch state_dict ({err}); {hint}") from err
    own = module.state_dict()
    if not isinstance(state, dict) or set(state) != set(own):
        raise ValueError(f"{what} {path} is not a {type(module).__name__} state_dict; {hint}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        shown = ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad)
        raise ValueError(
            f"{what} {path} has other shapes than this YAML builds ({shown}); pass the sizes "
            f"it was trained with. {hint}"
        )
    module.load_state_dict(state)


# --------------------------------------------------------------------------------------------
# The Brain
# --------------------------------------------------------------------------------------------
class L2I(TrainableInterpreterBrain):
    """L2I interpreter: NMF activations from a frozen classifier's maps (module docstring).

    Trained modules: ``psi_model`` (``modules["psi"]``) and ``theta`` (``modules["theta"]``);
    frozen: the classifier (``model``) and ``nmf_decoder`` (loaded from ``nmf_decoder_path``,
    written by ``train_nmf.py``). Hparams of the method: ``alpha``, ``beta``,
    ``classifier_temp``, ``relevance_th``, ``theta_frames``, ``pretrained_theta``.
    Per-sample metrics besides the shared ones, with the published names: ``l2i_fid`` (theta's
    decision equals the label), ``recons_err``, ``reg_loss``, ``fid_loss``; and
    ``n_relevant`` (components kept by the mask).

    Arguments
    ---------
    *args, **kwargs
        As :class:`~audio_interpretability.brains.trainable.TrainableInterpreterBrain`.

    Example
    -------
    >>> L2I.needs_maps, L2I.train_script
    (True, 'train_l2i.py')
    """

    needs_maps = True
    trains_on_masked_passes = False  # the published loss reads no masked pass
    train_script = "train_l2i.py"

    required_hparams = TrainableInterpreterBrain.required_hparams + (
        "theta",
        "nmf_decoder",
        "nmf_decoder_path",
        "pretrained_theta",
        "alpha",
        "beta",
        "classifier_temp",
        "relevance_th",
        "theta_frames",
    )

    def check_options(self) -> None:
        """Check that theta pools ``theta_frames`` frames; load the frozen NMF dictionary
        (here, so that it is in place before a ``pretrained_interpreter`` is loaded)."""
        theta = self.hparams.theta
        if theta.hard_att.in_features != int(self.hparams.theta_frames):
            raise ValueError(
                f"theta pools {theta.hard_att.in_features} frames but theta_frames is "
                f"{self.hparams.theta_frames}; pass T: !ref <theta_frames> to Theta in the YAML"
            )
        decoder = self.hparams.nmf_decoder
        bins = self.hparams.frontend.n_bins
        if decoder.W.shape[0] != bins:
            raise ValueError(
                f"the NMF dictionary has {decoder.W.shape[0]} bins but the spectrogram "
                f"{bins}; pass --n_freq {bins} (n_fft // 2 + 1)"
            )
        path = self.hparams.nmf_decoder_path
        if path is None:
            logger.warning(
                "nmf_decoder_path is null: the NMF dictionary keeps its random initial values "
                "(fine for tests, meaningless for explanations); train one with "
                "recipes/ESC50/interpret/train_nmf.py hparams/nmf.yaml"
            )
        else:
            load_nmf_decoder(path, decoder)  # nmf_decoder.ckpt (or its folder), strictly
        decoder.to(self.device).eval().requires_grad_(False)

    # ------------------------------------------------------------------ load / export
    def load_interpreter(self, path: str) -> None:
        """Load ``psi_model`` (base class) and ``theta`` (``pretrained_theta``, or the
        ``theta.ckpt`` next to the ``psi_model.ckpt``)."""
        super().load_interpreter(path)
        path = str(path)
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        theta_path = self.hparams.pretrained_theta or os.path.join(folder, THETA_FILE)
        _load_state(
            str(theta_path),
            self.hparams.theta,
            "theta",
            f"the L2I mask needs the trained theta: pass --pretrained_theta <save_folder>/"
            f"{THETA_FILE} (written next to {PSI_FILE} by {self.train_script}, or the "
            f"theta.ckpt of a published CKPT+ folder)",
        )

    def export_interpreter(self, path: str | None = None) -> Path:
        """Write ``psi_model.ckpt`` (base class) and ``theta.ckpt`` next to it."""
        psi_path = super().export_interpreter(path)
        state = {k: v.detach().cpu() for k, v in self.hparams.theta.state_dict().items()}
        _save_atomic(state, psi_path.parent / THETA_FILE)
        return psi_path

    # ------------------------------------------------------------------ the method
    def make_mask(self, spec: Spectrogram, clf: ClassifierOutput) -> MaskOutput:
        """psi on the classifier maps -> activations, reconstruction, theta, relevance, mask.

        Extras: ``activations`` (B, K, frames'), ``reconstruction`` (B, frames', n_freq),
        ``theta_out`` (B, C), ``relevance`` (B, K) and ``selected`` (B, K) bool.
        """
        frames = spec.X.shape[1]
        H = nmf_activations(self.modules.psi(psi_input(clf.maps)))[:, :, :frames]  # (B, K, frames')
        decoder = self.hparams.nmf_decoder
        reconstruction = decoder(H).transpose(1, 2)  # (B, frames', n_freq)
        theta_in = fit_frames(H, int(self.hparams.theta_frames))  # (B, K, theta_frames)
        theta_out = self.modules.theta(theta_in)  # (B, C) probabilities
        with torch.no_grad():
            pred = clf.logits.argmax(dim=-1)  # (B,)
            r = relevance(self.hparams.theta, theta_in, pred)  # (B, K); unwrapped under DDP
            selected = r > float(self.hparams.relevance_th)  # NaN (all-zero H): none
            W = decoder.return_W().float()  # (F, K)
            mask = component_mask(W, H.detach().float(), selected, eps=EPS)  # (B, frames', F)
            mask = mask.clamp(0.0, 1.0)  # W, H >= 0: only rounding can leave [0, 1]
            mask = F.pad(mask, (0, 0, 0, frames - mask.shape[1]))  # published zero padding
        extras = {
            "activations": H,
            "reconstruction": reconstruction,
            "theta_out": theta_out,
            "relevance": r,
            "selected": selected,
        }
        return MaskOutput(mask=mask, extras=extras)

    def interpretation_panels(self, X, mask, extras, index, truths=None):
        """The base panels plus the NMF reconstruction ``(W H)^T`` (zero-padded to X's
        frames) after the input."""
        panels = super().interpretation_panels(X, mask, extras, index, truths)
        if "reconstruction" in extras:
            recon = extras["reconstruction"][index]  # (frames', F)
            recon = F.pad(recon, (0, 0, 0, X.shape[1] - recon.shape[0]))
            panels.insert(1, ("NMF reconstruction W H", recon.detach().float().cpu()))
        return panels

    def interpreter_loss(self, out: Interpretation, batch, stage: sb.Stage) -> torch.Tensor:
        """The published L2I objective (:func:`l2i_loss`)."""
        loss, _ = self._loss_and_terms(out)
        return loss

    def _loss_and_terms(self, out: Interpretation):
        return l2i_loss(
            out.logits,
            out.extras["theta_out"],
            out.extras["reconstruction"],
            out.X,
            out.extras["activations"],
            alpha=self.hparams.alpha,
            beta=self.hparams.beta,
            classifier_temp=self.hparams.classifier_temp,
        )

    def extra_metrics(self, out: Interpretation, batch, stage) -> dict:
        """Published L2I metrics per sample: ``l2i_fid``, ``recons_err``, ``reg_loss``,
        ``fid_loss``; and ``n_relevant`` (components kept)."""
        labels = batch.class_string_encoded.data.to(self.device).view(-1)
        _, terms = self._loss_and_terms(out)
        terms["l2i_fid"] = (out.extras["theta_out"].argmax(dim=-1) == labels).float()
        terms["n_relevant"] = out.extras["selected"].float().sum(dim=1)
        return terms
