"""Gradient-based saliency baselines (captum): Saliency, SmoothGrad, Integrated Gradients, Grad-CAM.

Each attributes the frozen classifier's logit of its PREDICTED class to the bins of the
input spectrogram ``X = log1p|STFT|`` (B, frames, bins) with a captum method, and turns the
attribution into a mask in [0, 1] as the L-MAC paper's evaluation of its gradient baselines
did (docs/GRADIENT.md)::

    X (B, frames, bins) --captum, target = argmax logits--> attribution A (B, frames, bins)
    Saliency / SmoothGrad / IG:  mask = |A| / max |A|              (per sample)
    Grad-CAM:  layer map (B, 1, h, w) -> bilinear to (frames, bins) = A
               mask = relu(A) / max relu(A)                         (per sample)

A sample whose attribution is all zero gets an all-zero mask and a warning, never NaN.
Nothing is trained. The attributions are captum's (:mod:`captum.attr`); this module only
chooses the target, the input, the seeds and the mask rule. Everything else (front-end,
classifier passes, metrics, saved files) is the
:class:`~audio_interpretability.brains.interpreter.InterpreterBrain` base's; the base calls
:meth:`~GradientInterpreter.make_mask` with gradients enabled
(:attr:`~audio_interpretability.brains.interpreter.InterpreterBrain.needs_input_gradients`).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from audio_interpretability.brains.interpreter import InterpreterBrain, MaskOutput
from audio_interpretability.features import Spectrogram
from audio_interpretability.models.base import ClassifierOutput

logger = logging.getLogger(__name__)

__all__ = [
    "GradCAM",
    "GradientInterpreter",
    "IntegratedGradients",
    "Saliency",
    "SmoothGrad",
    "attribution_to_mask",
    "resolve_module",
]

#: Integrated Gradients' baselines (``ig_baseline``).
IG_BASELINES = ("zero", "mean")


# --------------------------------------------------------------------------------------------
# Mask rule and layer lookup
# --------------------------------------------------------------------------------------------
def attribution_to_mask(attribution: torch.Tensor, rule: str = "abs") -> torch.Tensor:
    """Per-sample mask in [0, 1] of an attribution: ``rule(A) / max rule(A)``.

    ``rule`` is ``"abs"`` (saliency, SmoothGrad, IG: the L-MAC paper's evaluation) or
    ``"relu"`` (Grad-CAM). A sample whose ``rule(A)`` is all zero gives an all-zero mask and a
    warning (never NaN).

    Arguments
    ---------
    attribution : torch.Tensor
        (B, ...) raw attribution.
    rule : str
        ``"abs"`` or ``"relu"``.

    Returns
    -------
    torch.Tensor
        (B, ...) float mask in [0, 1], each non-zero sample with maximum 1.

    Example
    -------
    >>> attribution_to_mask(torch.tensor([[-2.0, 1.0], [0.0, 0.0]]))
    tensor([[1.0000, 0.5000],
            [0.0000, 0.0000]])
    >>> attribution_to_mask(torch.tensor([[-2.0, 1.0]]), rule="relu")
    tensor([[0., 1.]])
    """
    if rule not in ("abs", "relu"):
        raise ValueError(f"rule must be 'abs' or 'relu', got {rule!r}")
    if not bool(torch.isfinite(attribution).all()):
        raise ValueError(
            "the attribution holds NaN or Inf values; check the classifier checkpoint, or run "
            "in fp32 (--precision fp32)."
        )
    values = attribution.detach().float()
    values = values.abs() if rule == "abs" else values.clamp_min(0.0)
    flat = values.reshape(values.shape[0], -1)  # (B, N)
    peak = flat.amax(dim=1, keepdim=True)  # (B, 1)
    zero = peak <= 0
    if bool(zero.any()):
        logger.warning(
            "%d of %d attributions are all zero (no gradient reached X, or Grad-CAM found no "
            "positive evidence): their masks are all zero.",
            int(zero.sum()),
            flat.shape[0],
        )
    mask = torch.where(zero, torch.zeros_like(flat), flat / peak.clamp_min(1e-30))
    return mask.reshape(values.shape)


def resolve_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """The submodule of ``root`` at a dotted ``path``; integer parts index ModuleLists, ``-1``
    included (``"embedding_model.stages.-1.blocks.-1.modulation.h"``).

    Example
    -------
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    >>> resolve_module(net, "-1")
    ReLU()
    """
    module = root
    for part in path.split("."):
        try:
            if part.lstrip("-").isdigit():
                module = module[int(part)]
            else:
                module = getattr(module, part)
        except (AttributeError, IndexError, TypeError, KeyError) as err:
            raise ValueError(
                f"gradcam_layer {path!r}: {type(module).__name__} has no {part!r}; give a "
                f"dotted path of the classifier (model), e.g. embedding_model.conv_block6 "
                f"(CNN14) or embedding_model.stages.-1.blocks.-1.modulation.h (FocalNet)"
            ) from err
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"gradcam_layer {path!r} is a {type(module).__name__}, not a module")
    return module


# --------------------------------------------------------------------------------------------
# The Brains
# --------------------------------------------------------------------------------------------
class GradientInterpreter(InterpreterBrain):
    """Base of the gradient baselines: attribute the predicted class to X, mask = rule(A)/max.

    Subclasses define :meth:`attributions` (the captum call) and, for Grad-CAM, the mask rule
    (:attr:`mask_rule`). On top of the hparams of :class:`InterpreterBrain` it reads
    ``internal_batch_size`` (the most classifier inputs in one forward pass of the attribution;
    null: all at once). Nothing is trained. The classifier keeps ``requires_grad=False``; only
    a detached copy of X gets a gradient.
    """

    needs_input_gradients = True

    #: How the raw attribution becomes a mask (:func:`attribution_to_mask`).
    mask_rule: str = "abs"

    def forward_logits(self, X: torch.Tensor) -> torch.Tensor:
        """The function captum differentiates: (B, frames, bins) X -> (B, C) logits."""
        return self.classifier_forward(X).logits

    def attributions(self, X: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Raw attribution (B, frames, bins) of logit ``target`` (B,) to ``X`` (B, frames,
        bins), before the mask rule; gradients are enabled here."""
        raise NotImplementedError(f"{type(self).__name__} must implement attributions()")

    def _input(self, X: torch.Tensor) -> torch.Tensor:
        """A leaf copy of X that requires a gradient (the classifier's parameters do not)."""
        return X.detach().clone().requires_grad_(True)

    def make_mask(self, spec: Spectrogram, clf: ClassifierOutput) -> MaskOutput:
        """Attribute the predicted class to X; mask = rule(A) / per-sample max.

        Returns
        -------
        MaskOutput
            ``mask`` (B, frames, bins) in [0, 1] (it is the normalised saliency: no extras).
        """
        target = clf.logits.argmax(dim=-1)  # (B,) the predicted class
        with torch.enable_grad():
            attribution = self.attributions(spec.X, target).detach()  # (B, frames, bins)
        mask = attribution_to_mask(attribution, self.mask_rule).to(spec.X.dtype)
        return MaskOutput(mask=mask, extras={})

    def extra_metrics(self, out, batch, stage) -> dict:
        """``mask_fraction``: the mean mask value per clip (B,) (soft masks: their mass)."""
        return {"mask_fraction": out.mask.float().reshape(out.mask.shape[0], -1).mean(dim=1)}


class Saliency(GradientInterpreter):
    """Saliency (Simonyan et al., 2014): ``A = d logit_c / d X`` (captum ``Saliency``).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.train_logger import FileTrainLogger
    >>> from audio_interpretability.features import Frontend
    >>> from audio_interpretability.models import AudioClassifier, Cnn14, LinearHead
    >>> folder = tempfile.mkdtemp()
    >>> model = AudioClassifier(Cnn14(base_channels=2, emb_dim=64), LinearHead(64, 3))
    >>> hparams = dict(
    ...     frontend=Frontend(), model=model, embedding_model_path=None,
    ...     classifier_model_path=None, output_folder=folder, seed=0,
    ...     save_interpretations=False, n_saved_interpretations=0, add_wham_noise=False,
    ...     wham_folder=None, wham_split="tt", wham_snr_db=0.0, random_baseline=True,
    ...     loc_threshold=0.5, train_logger=FileTrainLogger(folder + "/log.txt"),
    ...     internal_batch_size=None,
    ... )
    >>> brain = Saliency(hparams=hparams, run_opts={"device": "cpu"})
    >>> X_int, mask, phase, X = brain.interpret_computation_steps(torch.randn(2, 16000))
    >>> mask.shape, mask.amax(dim=(1, 2)).tolist()
    (torch.Size([2, 87, 513]), [1.0, 1.0])
    """

    def attributions(self, X: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Raw gradient (B, frames, bins) of the target logit (signed: ``abs=False``)."""
        from captum.attr import Saliency as CaptumSaliency

        return CaptumSaliency(self.forward_logits).attribute(
            self._input(X), target=target, abs=False
        )


class SmoothGrad(GradientInterpreter):
    """SmoothGrad (Smilkov et al., 2017): the gradient averaged over noisy copies of X
    (captum ``NoiseTunnel(Saliency)``, ``nt_type="smoothgrad"``).

    Reads ``smoothgrad_n_samples`` (noisy copies per clip) and ``smoothgrad_stdev`` (standard
    deviation of the Gaussian noise, in X's log1p-magnitude units; the noisy copies are clamped
    at 0, as a magnitude cannot be negative). The noise is drawn with a
    seed taken, batch after batch, from a generator seeded with ``seed`` (reset at each stage):
    a fixed seed gives the same masks, and the global torch RNG is left as it was
    (``torch.random.fork_rng``).
    """

    def attributions(self, X: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean signed gradient (B, frames, bins) over ``smoothgrad_n_samples`` noisy X."""
        from captum.attr import NoiseTunnel
        from captum.attr import Saliency as CaptumSaliency

        n_samples = int(self.hparams.smoothgrad_n_samples)
        stdev = float(self.hparams.smoothgrad_stdev)
        if n_samples < 1 or stdev < 0:
            raise ValueError(
                f"SmoothGrad needs smoothgrad_n_samples >= 1 and smoothgrad_stdev >= 0, got "
                f"{n_samples} and {stdev}; e.g. --smoothgrad_n_samples 50 --smoothgrad_stdev 0.15"
            )
        chunk = self.hparams.internal_batch_size
        chunk = None if chunk is None else max(1, int(chunk) // X.shape[0])  # copies per pass
        seed = int(torch.randint(2**62, (1,), generator=self._noise_generator()))
        cuda = [X.device.index or 0] if X.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # restores the CPU and X's GPU generators
            torch.random.default_generator.manual_seed(seed)
            for index in cuda:  # only X's GPU: torch.manual_seed would reseed every GPU
                torch.cuda.default_generators[index].manual_seed(seed)
            # a noisy log1p magnitude below 0 is no magnitude: log1p(fbank(expm1(X))) of it is
            # NaN once the filterbank sums it below -1 (silent bins), so clamp the copies at 0
            noisy_logits = lambda X_noisy: self.forward_logits(X_noisy.clamp_min(0))  # noqa: E731
            return NoiseTunnel(CaptumSaliency(noisy_logits)).attribute(
                self._input(X),
                nt_type="smoothgrad",
                nt_samples=n_samples,
                nt_samples_batch_size=chunk,
                stdevs=stdev,
                target=target,
                abs=False,
            )

    def _noise_generator(self) -> torch.Generator:
        if getattr(self, "_noise_gen", None) is None:
            self._noise_gen = torch.Generator()
            self._noise_gen.manual_seed(int(self.hparams.seed) + 2)
        return self._noise_gen

    def on_stage_start(self, stage, epoch=None):
        """As the base; the noise seeds restart (each stage draws the same noise)."""
        super().on_stage_start(stage, epoch)
        self._noise_gen = None


class IntegratedGradients(GradientInterpreter):
    """Integrated Gradients (Sundararajan et al., 2017): ``A = (X - X0) * mean_a grad f(X0 +
    a (X - X0))`` over ``ig_n_steps`` points of the path (captum ``IntegratedGradients``,
    Gauss-Legendre rule).

    Reads ``ig_n_steps`` and ``ig_baseline``: ``zero`` (X0 = 0: silence, what a mask of zeros
    leaves) or ``mean`` (each clip's mean log1p magnitude in every bin). Completeness:
    ``sum A = f(X) - f(X0)`` for the target logit, up to the rule's error
    (``return_convergence_delta``).
    """

    def baseline(self, X: torch.Tensor) -> torch.Tensor:
        """The (B, frames, bins) baseline X0 of ``ig_baseline``."""
        kind = self.hparams.ig_baseline
        if kind == "zero":
            return torch.zeros_like(X)
        if kind == "mean":
            return X.detach().mean(dim=(1, 2), keepdim=True).expand_as(X).contiguous()
        raise ValueError(
            f"ig_baseline {kind!r} is not one of {IG_BASELINES}; pass --ig_baseline zero "
            "(silence) or mean (each clip's mean log1p magnitude)"
        )

    def attributions(
        self, X: torch.Tensor, target: torch.Tensor, return_convergence_delta: bool = False
    ):
        """Raw IG attribution (B, frames, bins) of the target logit; with
        ``return_convergence_delta`` also captum's (B,) ``sum A - (f(X) - f(X0))``."""
        from captum.attr import IntegratedGradients as CaptumIG

        n_steps = int(self.hparams.ig_n_steps)
        if n_steps < 1:
            raise ValueError(f"ig_n_steps must be >= 1, got {n_steps}; e.g. --ig_n_steps 50")
        chunk = self.hparams.internal_batch_size
        return CaptumIG(self.forward_logits).attribute(
            self._input(X),
            baselines=self.baseline(X),
            target=target,
            n_steps=n_steps,
            internal_batch_size=None if chunk is None else max(int(chunk), X.shape[0]),
            return_convergence_delta=return_convergence_delta,
        )


class GradCAM(GradientInterpreter):
    """Grad-CAM (Selvaraju et al., 2017) at the layer ``gradcam_layer`` (captum
    ``LayerGradCam``): ``relu(sum_k w_k A_k)`` with ``w_k`` the spatial mean of the target
    logit's gradient on channel k; the (h, w) map is upsampled bilinearly to X's (frames,
    bins), then the mask is ``relu / max``.

    ``gradcam_layer`` is a dotted path in the classifier (``model``) to a module whose output
    is a (B, C, h, w) map with time first and frequency second: CNN14's last convolutional
    block ``embedding_model.conv_block6``; FocalNet's last-stage modulator
    ``embedding_model.stages.-1.blocks.-1.modulation.h``. ViT has none (its blocks output
    (B, 1 + N, D) tokens; hparams/gradient_vit.yaml sets ``gradcam_layer: null``): a
    ValueError says so and names what to use instead (saliency, SmoothGrad, IG, or AMT).
    """

    mask_rule = "relu"

    def _layer(self) -> torch.nn.Module:
        path = self.hparams.gradcam_layer
        if path is None:
            raise ValueError(
                "gradcam_layer is null: this classifier has no layer for Grad-CAM (a ViT's "
                "blocks output tokens, not a (B, C, time, frequency) map). Use --int_method "
                "saliency, smoothgrad or integrated_gradients, or AMT (hparams/amt_vit.yaml); "
                "or give --gradcam_layer the dotted path of a convolutional layer."
            )
        model = self.hparams.model
        cached = getattr(self, "_layer_cache", None)  # (model, path, layer)
        if cached is None or cached[0] is not model or cached[1] != path:
            cached = self._layer_cache = (model, path, resolve_module(model, str(path)))
        return cached[2]

    def layer_attributions(self, X: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Grad-CAM map (B, h, w) at the layer's resolution, before ReLU."""
        from captum.attr import LayerGradCam

        layer = self._layer()
        handle = layer.register_forward_hook(self._check_layer_output)
        try:
            cam = LayerGradCam(self.forward_logits, layer).attribute(
                self._input(X), target=target, relu_attributions=False
            )  # (B, 1, h, w)
        finally:
            handle.remove()
        return cam[:, 0]  # (B, h, w)

    def _check_layer_output(self, layer, inputs, output) -> None:
        """Forward hook: Grad-CAM needs one (B, C, h, w) map (checked before captum runs)."""
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            return
        if isinstance(output, torch.Tensor):
            shapes = tuple(output.shape)
        elif isinstance(output, (tuple, list)):
            shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else o for o in output]
        else:
            shapes = type(output).__name__
        raise ValueError(
            f"Grad-CAM needs a layer whose output is one (B, C, h, w) map, but gradcam_layer "
            f"{self.hparams.gradcam_layer!r} ({type(layer).__name__}) outputs {shapes} (a "
            "transformer's (B, tokens, D) tokens, or a tuple). Pick a convolutional layer "
            "(CNN14: embedding_model.conv_block6; FocalNet: "
            "embedding_model.stages.-1.blocks.-1.modulation.h); for a ViT use --int_method "
            "saliency, smoothgrad or integrated_gradients, or AMT (hparams/amt_vit.yaml)."
        )

    def attributions(self, X: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Grad-CAM map upsampled to X's grid (B, frames, bins), before ReLU."""
        cam = self.layer_attributions(X, target)  # (B, h, w)
        return F.interpolate(
            cam.unsqueeze(1), size=tuple(X.shape[1:]), mode="bilinear", align_corners=False
        )[:, 0]  # (B, frames, bins)
