"""``InterpreterBrain``: what every interpreter of a frozen audio classifier shares.

One batch goes through this data flow (see DESIGN.md)::

    wav (B, T) [+ WHAM! noise] -> Frontend (STFT once) -> X = log1p|STFT|, phase
    frozen classifier(X) -> logits (B, C) (+ intermediate maps when the interpreter needs them)
    make_mask(...)  -> mask M (B, frames, bins) in [0, 1]        <- the one override point
    classifier([M*X ; (1-M)*X]) in ONE batched pass -> logits_in, logits_out
    expm1(M*X) with the input phase -> ISTFT -> listenable waveform

The interpretation is computed once per batch in :meth:`compute_forward`; the faithfulness
metrics, the ground-truth localisation scores, the loss of trainable interpreters, and the saved
WAV/PNG files all reuse it. Subclasses override :meth:`make_mask` (how the mask is made) and,
for trainable interpreters, :meth:`interpreter_loss`; nothing else.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import speechbrain as sb
import torch

from audio_interpretability import metrics as M
from audio_interpretability.data.wham import NOISE_KEY, ClipNoiseMixin, wham_noise_in_workers
from audio_interpretability.distributed import DistributedBrainMixin
from audio_interpretability.features import Spectrogram
from audio_interpretability.models.base import ClassifierOutput

logger = logging.getLogger(__name__)


class MaskOutput(NamedTuple):
    """What :meth:`InterpreterBrain.make_mask` returns.

    Attributes
    ----------
    mask : torch.Tensor
        (B, frames, bins) mask in [0, 1], aligned with the spectrogram X.
    extras : dict
        Interpreter-specific tensors worth plotting or reusing (e.g. AMT's saliency map
        ``"saliency"`` (B, frames, bins), L-MAC's ``"mask_logits"``).
    """

    mask: torch.Tensor
    extras: dict


class Interpretation(NamedTuple):
    """What :meth:`InterpreterBrain.compute_forward` returns for one batch.

    The first five fields are those of the published recipes' ``compute_forward``.

    Attributes
    ----------
    X_int : torch.Tensor
        (B, frames, bins) interpretation spectrogram ``M * X`` (log1p domain).
    mask : torch.Tensor
        (B, frames, bins) mask M.
    phase : torch.Tensor
        (B, frames, bins) STFT phase of the (possibly noisy) input.
    logits : torch.Tensor
        (B, C) classifier logits on the input.
    X : torch.Tensor
        (B, frames, bins) input spectrogram ``log1p|STFT|``.
    logits_in : torch.Tensor
        (B, C) classifier logits on ``M * X``.
    logits_out : torch.Tensor
        (B, C) classifier logits on ``(1 - M) * X``.
    wavs : torch.Tensor
        (B, T) the waveforms that were interpreted (noise included).
    spec : Spectrogram
        The front-end output for ``wavs``.
    extras : dict
        ``MaskOutput.extras`` plus, when the batch has stems, ``"truth"`` (B, frames, bins) the
        ground-truth event mask; when noise was mixed in, ``"clean_wavs"`` (B, T) the clean
        clips and ``"clean_gain"`` (B,) their factor in the mixture; outside training, the
        baselines ``"random_mask"`` / ``"swap_mask"`` with their ``*_logits_in`` /
        ``*_logits_out`` and ``"swap_valid"`` (B,) bool.
    """

    X_int: torch.Tensor
    mask: torch.Tensor
    phase: torch.Tensor
    logits: torch.Tensor
    X: torch.Tensor
    logits_in: torch.Tensor
    logits_out: torch.Tensor
    wavs: torch.Tensor
    spec: Spectrogram
    extras: dict


class InterpreterBrain(ClipNoiseMixin, DistributedBrainMixin, sb.Brain):
    """Base Brain of the interpreters (AMT, L-MAC) of a frozen classifier.

    Hparams it reads (YAML keys): ``frontend`` (:class:`~audio_interpretability.features.Frontend`),
    ``model`` (:class:`~audio_interpretability.models.AudioClassifier` built from
    ``embedding_model`` and ``classifier``), ``embedding_model_path`` and
    ``classifier_model_path`` (checkpoints of the classifier; ``null`` keeps the weights as
    built, with a warning), ``output_folder``, ``save_interpretations`` (bool),
    ``n_saved_interpretations`` (int), ``add_wham_noise``, ``wham_folder``, ``wham_snr_db``,
    ``wham_noise_in_workers`` (training noise drawn per clip in the DataLoader workers, see
    :meth:`make_dataloader`; absent: False),
    ``random_baseline`` (also score two chance baselines outside training: a random mask of
    the same values, ``random_*`` keys, and another clip's mask, ``swap_*`` keys), ``loc_threshold``
    (binarisation threshold of the mask for localisation), and ``seed``.

    Arguments
    ---------
    *args, **kwargs
        As :class:`speechbrain.Brain`.
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder, optional
        Names the classes in saved files and metrics.
    noise : audio_interpretability.data.wham.WhamNoise, optional
        The noise source mixed into every clip (training and evaluation). None: built once
        from the YAML (:meth:`~audio_interpretability.data.wham.WhamNoise.from_hparams`, split
        ``wham_split``) when ``add_wham_noise`` is set, else no noise. The evaluation of other
        settings swaps it with :meth:`using_noise`; no hparam is rewritten at run time.
    """

    #: Whether :meth:`make_mask` needs the classifier's intermediate maps.
    needs_maps: bool = False

    #: Whether :meth:`make_mask` differentiates the frozen classifier with respect to its input
    #: X (gradient baselines: saliency, integrated gradients, Grad-CAM). The classifier pass of
    #: :meth:`interpret` stays under ``torch.no_grad()``; :meth:`make_mask` is then called under
    #: ``torch.enable_grad()`` (also inside :meth:`evaluate` and
    #: :meth:`interpret_computation_steps`, which run without gradients) and its mask is
    #: detached. The classifier's parameters keep ``requires_grad=False``: only X gets a
    #: gradient.
    needs_input_gradients: bool = False

    #: Whether the training loss reads the masked-in / masked-out logits (L-MAC's does; L2I's
    #: and PIQ's do not, and their training skips those classifier passes: ``logits_in`` and
    #: ``logits_out`` are then None in TRAIN).
    trains_on_masked_passes: bool = True

    #: Whether a mask with fewer frames than X crops X (and everything after it) to those
    #: frames, as the published L-MAC does; otherwise every mask must have X's shape.
    crops_frames: bool = False

    #: Masks of earlier batches kept as swap partners (the swapped-mask baseline).
    SWAP_BANK_SIZE: int = 16

    #: Hparams every interpreter YAML must define (checked at construction).
    required_hparams: tuple = (
        "frontend",
        "model",
        "embedding_model_path",
        "classifier_model_path",
        "output_folder",
        "seed",
        "save_interpretations",
        "n_saved_interpretations",
        "add_wham_noise",
        "wham_folder",
        "wham_split",
        "wham_snr_db",
        "random_baseline",
        "loc_threshold",
        "train_logger",
    )

    def __init__(self, *args, label_encoder=None, noise=None, **kwargs):
        super().__init__(*args, **kwargs)
        missing = [k for k in self.required_hparams if k not in self.hparams.__dict__]
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs these hparams, missing from the YAML: "
                f"{', '.join(missing)}. Add them (see hparams/amt_focalnet.yaml or "
                "hparams/lmac_cnn14.yaml for documented defaults)."
            )
        self.label_encoder = label_encoder
        self.metrics_folder = Path(self.hparams.output_folder)
        if noise is None and self.hparams.add_wham_noise:
            from audio_interpretability.data.wham import WhamNoise

            noise = WhamNoise.from_hparams(self.hparams.__dict__)
        self.noise = noise
        wham_noise_in_workers(self.hparams.__dict__)  # a bad value fails now, not in fit
        self.saved_count = 0
        self.saved_per_class: dict[int, int] = {}  # n_saved_per_class: clips saved per class
        self._interpretations_folder: Path | None = None  # where this stage saves (None: not)
        self.metric_accumulator = None
        self.mask_dependence = M.MaskDependence()
        self._swap_bank: list = []
        self.last_summary: dict = {}
        self._load_frozen_classifier()
        self.hparams.frontend.to(self.device)

    # ------------------------------------------------------------------ set-up
    def _load_frozen_classifier(self) -> None:
        """Load the classifier checkpoints (if given), move to device, freeze, eval mode.

        The classifier is kept out of ``self.modules`` so that ``Brain.fit`` never puts it back
        in training mode (BatchNorm statistics must not move) nor gives it to an optimizer.
        """
        from audio_interpretability.checkpoints import load_classifier

        emb_path = self.hparams.embedding_model_path
        clf_path = self.hparams.classifier_model_path
        model = self.hparams.model
        if emb_path is None and clf_path is None:
            logger.warning(
                "embedding_model_path and classifier_model_path are null: the classifier keeps "
                "the weights it was built with (fine for tests, meaningless for explanations)."
            )
        else:
            load_classifier(model.embedding_model, model.classifier, emb_path, clf_path)
        model.to(self.device).eval().requires_grad_(False)

    @contextlib.contextmanager
    def using_noise(self, noise):
        """Interpret with another noise source (None: the clean clips) inside the block.

        Example: ``with brain.using_noise(None): brain.evaluate(...)`` scores the clean clips
        of a brain trained with WHAM! noise.
        """
        saved, self.noise = self.noise, noise
        try:
            yield self
        finally:
            self.noise = saved

    @property
    def training_noise(self):
        """The noise source of the training clips (:class:`ClipNoiseMixin`): :attr:`noise`."""
        return self.noise

    # --------------------------------------------------------- published API
    def preprocess(self, wavs: torch.Tensor) -> Spectrogram:
        """Front-end: STFT once, magnitude, log1p magnitude ``X`` and phase (B, frames, bins)."""
        return self.hparams.frontend(wavs)

    def classifier_forward(self, X: torch.Tensor, return_maps: bool = False) -> ClassifierOutput:
        """Frozen classifier on a (B, frames, bins) log1p spectrogram (masked or not)."""
        return self.hparams.model(X, return_maps=return_maps)

    def invert_stft_with_phase(self, X_int: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """Listenable waveform (B, T) of an interpretation ``X_int = M * X`` (log1p domain)."""
        return self.hparams.frontend.invert(torch.expm1(X_int), phase)

    def interpret(self, wavs: torch.Tensor) -> tuple[Spectrogram, ClassifierOutput, MaskOutput]:
        """The interpretation pipeline, the one place it is written: front-end -> frozen
        classifier (no gradient; maps when :attr:`needs_maps`) -> :meth:`make_mask` (with
        gradients enabled when :attr:`needs_input_gradients`).

        Arguments
        ---------
        wavs : torch.Tensor
            (B, T) waveforms on the brain's device.

        Returns
        -------
        spec : Spectrogram
            Front-end output (``X``, ``magnitude``, ``phase``: (B, frames, bins)).
        clf : ClassifierOutput
            The classifier's logits (B, C) (and maps) on ``X``.
        mask_out : MaskOutput
            The mask (B, frames, bins), checked to match ``X``, and the interpreter's extras.
        """
        spec = self.preprocess(wavs)
        with torch.no_grad():
            clf = self.classifier_forward(spec.X, return_maps=self.needs_maps)
        if self.needs_input_gradients:
            with torch.enable_grad():
                mask_out = self.make_mask(spec, clf)
            mask_out = MaskOutput(mask_out.mask.detach(), mask_out.extras)
        else:
            mask_out = self.make_mask(spec, clf)
        frames = mask_out.mask.shape[1]
        if self.crops_frames and mask_out.mask.dim() == 3 and frames < spec.X.shape[1]:
            # The mask covers the first `frames` frames only (published L-MAC): the masked
            # passes, the metrics and the listenable output use those frames.
            spec = Spectrogram(*(t[:, :frames] for t in spec))
        if mask_out.mask.shape != spec.X.shape:
            raise ValueError(
                f"{type(self).__name__}.make_mask returned a mask of shape "
                f"{tuple(mask_out.mask.shape)} but the spectrogram is {tuple(spec.X.shape)}; "
                "align it in make_mask."
            )
        return spec, clf, mask_out

    @torch.no_grad()
    def interpret_computation_steps(self, wavs: torch.Tensor):
        """Interpret a batch of waveforms (B, T) outside of training.

        Returns
        -------
        X_int : torch.Tensor
            (B, frames, bins) interpretation spectrogram.
        mask : torch.Tensor
            (B, frames, bins) mask.
        phase : torch.Tensor
            (B, frames, bins) input phase.
        X : torch.Tensor
            (B, frames, bins) input spectrogram.
        """
        spec, _, mask_out = self.interpret(wavs.to(self.device))
        return mask_out.mask * spec.X, mask_out.mask, spec.phase, spec.X

    # --------------------------------------------------------- override points
    def make_mask(self, spec: Spectrogram, clf: ClassifierOutput) -> MaskOutput:
        """Make the (B, frames, bins) mask from the front-end output and the classifier pass.

        The one thing every interpreter must define.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement make_mask()")

    def interpreter_loss(self, out: Interpretation, batch, stage: sb.Stage) -> torch.Tensor:
        """Training loss of the interpreter; interpreters that do not train return zero."""
        return torch.zeros((), device=self.device)

    # --------------------------------------------------------- forward pass
    def prepare_wavs(self, batch, stage: sb.Stage):
        """Waveforms of the batch, mixed with the brain's noise source (:attr:`noise`) if any.

        The noise is the batch's ``noise_sig`` when it has one (the training set with
        ``wham_noise_in_workers``: drawn per clip in the DataLoader workers), else a draw of
        the source's generator (:meth:`~audio_interpretability.data.wham.WhamNoise.sample`).
        Either way it is mixed at ``wham_snr_db`` by
        :func:`~audio_interpretability.data.wham.mix_at_snr`.

        Returns
        -------
        wavs : torch.Tensor
            (B, T) waveforms to interpret.
        gain : torch.Tensor or None
            (B,) factor by which the clean signal was scaled into the mixture (None: no noise).
        noise : torch.Tensor or None
            (B, T) the noise part of the mixture (None: no noise).
        """
        from audio_interpretability.data.wham import mix_at_snr

        wavs = batch.sig.data.to(self.device)
        if self.noise is None:
            return wavs, None, None
        if hasattr(batch, NOISE_KEY):
            noise = getattr(batch, NOISE_KEY).data.to(self.device)  # (B, T)
            if noise.shape != wavs.shape:
                raise ValueError(
                    f"the batch's {NOISE_KEY} is {tuple(noise.shape)} but its sig is "
                    f"{tuple(wavs.shape)}; draw each clip's noise at the clip's length"
                )
        else:
            noise = self.noise.sample(wavs.shape[0], wavs.shape[1]).to(self.device)
        snr = float(self.hparams.wham_snr_db)
        mixture, clean_part, noise_part = mix_at_snr(wavs, noise, snr_db=snr, return_parts=True)
        gain = clean_part.norm(dim=1) / wavs.norm(dim=1).clamp_min(1e-12)
        return mixture, gain, noise_part

    def ground_truth(self, batch, gain, noise_part) -> torch.Tensor | None:
        """(B, frames, bins) ground-truth event mask when the batch carries stems, else None."""
        if not hasattr(batch, "event_sig"):
            return None
        from audio_interpretability.data.synthetic import ground_truth_mask

        event = batch.event_sig.data.to(self.device)
        background = batch.background_sig.data.to(self.device)
        if gain is not None:
            event = event * gain[:, None]
            background = background * gain[:, None] + noise_part
        return ground_truth_mask(event, background, self.hparams.frontend)

    def masked_passes(self, X: torch.Tensor, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Classifier logits on ``M*X`` and ``(1-M)*X`` for each mask, in ONE batched pass.

        Returns ``[logits_in(m1), logits_out(m1), logits_in(m2), ...]``, each (B, C).
        """
        inputs = []
        for mask in masks:
            inputs += [mask * X, (1.0 - mask) * X]
        logits = self.classifier_forward(torch.cat(inputs, dim=0)).logits  # (2 K B, C)
        return list(logits.chunk(len(inputs), dim=0))

    def compute_forward(self, batch, stage) -> Interpretation:
        """Interpret one batch: front-end, classifier, mask, masked-in/out classifier passes."""
        batch = batch.to(self.device)
        wavs, gain, noise_part = self.prepare_wavs(batch, stage)
        spec, clf, mask_out = self.interpret(wavs)
        mask = mask_out.mask
        extras = dict(mask_out.extras)
        masks = {"": mask}
        if stage != sb.Stage.TRAIN and self.hparams.random_baseline:
            # Chance baselines, scored in the same batched pass: a random mask of the same
            # values, and each clip with another clip's mask (of another predicted class).
            masks["random_"] = M.random_mask_like(mask, generator=self._baseline_generator())
            masks["swap_"], extras["swap_valid"] = self._swapped_masks(mask, clf.logits)
        if stage == sb.Stage.TRAIN and not self.trains_on_masked_passes:
            logits = [None, None]  # the loss does not read them: no classifier pass on 2 B clips
        else:
            logits = self.masked_passes(spec.X, list(masks.values()))
        for k, prefix in enumerate(masks):
            if prefix:
                extras[f"{prefix}mask"] = masks[prefix]
                extras[f"{prefix}logits_in"] = logits[2 * k]
                extras[f"{prefix}logits_out"] = logits[2 * k + 1]
        logits_in, logits_out = logits[0], logits[1]
        if stage != sb.Stage.TRAIN:
            truth = self.ground_truth(batch, gain, noise_part)
            if truth is not None:
                extras["truth"] = truth[:, : spec.X.shape[1]]  # the frames the mask covers
        if gain is not None:  # the clean clip, and its factor in the mixture
            extras["clean_wavs"] = batch.sig.data.to(self.device)
            extras["clean_gain"] = gain
        return Interpretation(
            X_int=mask * spec.X,
            mask=mask,
            phase=spec.phase,
            logits=clf.logits,
            X=spec.X,
            logits_in=logits_in,
            logits_out=logits_out,
            wavs=wavs,
            spec=spec,
            extras=extras,
        )

    # --------------------------------------------------------- objectives, metrics
    def compute_objectives(self, predictions: Interpretation, batch, stage) -> torch.Tensor:
        """Interpreter loss; at VALID/TEST also gather every metric of the batch."""
        loss = self.interpreter_loss(predictions, batch, stage)
        if stage != sb.Stage.TRAIN:
            with torch.no_grad():
                self.update_metrics(predictions, batch, stage)
                if self._interpretations_folder is not None:
                    self.save_batch_interpretations(predictions, batch)
        return loss

    def update_metrics(self, out: Interpretation, batch, stage) -> None:
        """Add the batch's per-sample metrics (computed from ``out``, no model re-run)."""
        labels = batch.class_string_encoded.data.to(self.device).view(-1)
        values = M.compute_faithfulness_metrics(
            out.logits, out.logits_in, out.logits_out, out.mask, labels=labels
        )
        truth = out.extras.get("truth")
        threshold = float(self.hparams.loc_threshold)
        magnitude = out.spec.magnitude
        if truth is not None:
            values.update(M.localization_metrics(out.mask, truth, magnitude, threshold))
            values.update(M.profile_correlation(out.mask, truth))
        self.mask_dependence.update(out.mask)
        for prefix in ("random_", "swap_"):
            if f"{prefix}mask" not in out.extras:
                continue
            keep = out.extras.get(f"{prefix}valid", torch.ones_like(labels, dtype=torch.bool))
            if not bool(keep.any()):
                continue
            base = out.extras[f"{prefix}mask"][keep]
            base_values = M.compute_faithfulness_metrics(
                out.logits[keep],
                out.extras[f"{prefix}logits_in"][keep],
                out.extras[f"{prefix}logits_out"][keep],
                base,
            )
            if truth is not None:
                base_values.update(
                    M.localization_metrics(base, truth[keep], magnitude[keep], threshold)
                )
                base_values.update(M.profile_correlation(base, truth[keep]))
            values.update({f"{prefix}{k}": v for k, v in base_values.items()})
        values.update(self.extra_metrics(out, batch, stage))
        self.metric_accumulator.update(values)

    def _swapped_masks(self, mask: torch.Tensor, logits: torch.Tensor):
        """Each clip's swapped mask (another clip's, of another predicted class) and validity.

        Partners come from the batch, else from the last ``SWAP_BANK_SIZE`` masks of the stage
        (see :func:`~audio_interpretability.metrics.swap_partners`); masks of other lengths are
        cropped or zero-padded in time.

        Returns
        -------
        swapped : torch.Tensor
            (B, frames, bins) masks (a clip without a partner keeps its own mask).
        valid : torch.Tensor
            (B,) bool, False where no clip of another class was available.
        """
        pred = logits.argmax(dim=-1)  # (B,)
        frames = mask.shape[1]
        bank = [
            m[:frames]
            if m.shape[0] >= frames
            else torch.nn.functional.pad(m, (0, 0, 0, frames - m.shape[0]))
            for m, _ in self._swap_bank
        ]
        pool = torch.cat([mask.detach()] + [m.unsqueeze(0) for m in bank], dim=0)
        pool_pred = torch.cat(
            (
                pred,
                torch.tensor([c for _, c in self._swap_bank], dtype=torch.long, device=pred.device),
            )
        )
        index = M.swap_partners(pred, pool_pred)  # (B,)
        valid = index >= 0
        own = torch.arange(mask.shape[0], device=mask.device)
        swapped = pool[torch.where(valid, index, own)]
        fresh = [(m, int(c)) for m, c in zip(mask.detach().flip(0), pred.flip(0).tolist())]
        self._swap_bank = (fresh + self._swap_bank)[: self.SWAP_BANK_SIZE]
        return swapped, valid

    def extra_metrics(self, out: Interpretation, batch, stage) -> dict:
        """Interpreter-specific per-sample metrics (B,) to report too (default: none)."""
        return {}

    def _baseline_generator(self) -> torch.Generator:
        if getattr(self, "_rand_gen", None) is None:
            self._rand_gen = torch.Generator(device=self.device)
            self._rand_gen.manual_seed(int(self.hparams.seed) + 1)
        return self._rand_gen

    # --------------------------------------------------------- saving outputs
    def class_name(self, index: int) -> str:
        """Class name of an index (the index itself when no label encoder is known)."""
        if self.label_encoder is None:
            return str(int(index))  # int(): a 0-d tensor would print as "tensor(3)"
        return str(self.label_encoder.ind2lab[int(index)])

    def interpretations_folder(self, stage, epoch=None) -> Path | None:
        """Where ``stage`` saves interpretations, or None: at TEST
        ``<metrics_folder>/interpretations``; trainable interpreters may add VALID epochs."""
        if stage == sb.Stage.TEST:
            return self.metrics_folder / "interpretations"
        return None

    def interpretation_panels(
        self, X: torch.Tensor, mask: torch.Tensor, extras: dict, index: int, truths: dict = None
    ) -> list[tuple[str, torch.Tensor]]:
        """The figure panels of item ``index``: input, interpreter extras worth seeing (AMT's
        ``saliency``), mask, ``M * X`` and the ground truth(s) ``{title: (B, frames, bins)}``."""
        panels = [("input log1p|STFT|", X[index])]
        if "saliency" in extras:
            panels.append(("saliency", extras["saliency"][index]))
        panels += [("mask", mask[index]), ("interpretation M*X", mask[index] * X[index])]
        for title, truth in (truths or {}).items():
            panels.append((title, truth[index]))
        return [(title, p.detach().float().cpu()) for title, p in panels]

    def save_interpretations(
        self,
        folder: Path,
        names: list[str],
        wavs: torch.Tensor,
        spec: Spectrogram,
        mask: torch.Tensor,
        extras: dict,
        truths: dict | None = None,
        extra_wavs: dict | None = None,
        indices: list[int] | None = None,
    ) -> int:
        """Save the items ``indices`` (default: the first ``len(names)``), one per name:
        ``<folder>/<name>/{original,interpretation}.wav`` (plus ``extra_wavs`` (B, T) each) and
        ``<name>.png``; the one saving routine of every interpreter and evaluation (test stage,
        validation, overlap test). Returns the count."""
        from audio_interpretability import viz

        rows = list(range(len(names))) if indices is None else list(indices)
        if len(rows) != len(names):
            raise ValueError(f"save_interpretations: {len(names)} names for {len(rows)} items")
        if not rows:
            return 0
        frontend = self.hparams.frontend
        wav_int = frontend.invert(
            torch.expm1(mask[rows] * spec.X[rows]), spec.phase[rows], wavs.shape[1]
        )
        for j, (i, name) in enumerate(zip(rows, names)):
            viz.save_interpretation(
                folder,
                name,
                wavs[i].float().cpu(),
                wav_int[j].float().cpu(),
                frontend.sample_rate,
                self.interpretation_panels(spec.X, mask, extras, i, truths),
                suptitle=name,
                hop_samples=frontend.hop_samples,
                extra_wavs={k: w[i].float().cpu() for k, w in (extra_wavs or {}).items()},
            )
        return len(rows)

    def save_batch_interpretations(self, out: Interpretation, batch) -> None:
        """Save WAVs and a PNG for the first ``n_saved_interpretations`` samples of the stage
        (into :meth:`interpretations_folder`)."""
        if not self.hparams.save_interpretations:
            return
        budget = int(self.hparams.n_saved_interpretations) - self.saved_count
        if budget <= 0 or not sb.utils.distributed.if_main_process():
            return
        labels = batch.class_string_encoded.data.view(-1)
        # (runs trained before the key existed have none: the first clips, as before)
        has_key = hasattr(self.hparams, "n_saved_per_class")
        per_class = int(self.hparams.n_saved_per_class or 0) if has_key else 0
        if per_class > 0:  # clips of several classes: at most per_class of each true class
            rows = []
            for i, label in enumerate(labels.tolist()):
                if len(rows) < budget and self.saved_per_class.get(label, 0) < per_class:
                    rows.append(i)
                    self.saved_per_class[label] = self.saved_per_class.get(label, 0) + 1
        else:
            rows = list(range(min(budget, out.X.shape[0])))
        preds = out.logits.argmax(dim=-1)
        names = [
            f"{batch.id[i]}_true-{self.class_name(labels[i])}_pred-{self.class_name(preds[i])}"
            for i in rows
        ]
        truths = {"ground-truth event bins": out.extras["truth"]} if "truth" in out.extras else {}
        self.saved_count += self.save_interpretations(
            self._interpretations_folder, names, out.wavs, out.spec, out.mask, out.extras, truths,
            indices=rows,
        )  # fmt: skip

    # --------------------------------------------------------- stage hooks
    def on_stage_start(self, stage, epoch=None):
        """Reset metric bookkeeping; make sure the frozen classifier stays in eval mode; in
        TRAIN, the training set's per-clip noise gets its epoch (:class:`ClipNoiseMixin`)."""
        super().on_stage_start(stage, epoch)
        self.hparams.model.eval()
        if stage != sb.Stage.TRAIN:
            self.metric_accumulator = M.MetricAccumulator()
            self.mask_dependence = M.MaskDependence()
            self._swap_bank = []
            self._rand_gen = None  # re-seeded: each stage draws the same random masks
        self._interpretations_folder = self.interpretations_folder(stage, epoch)
        if self._interpretations_folder is not None:
            self.saved_count = 0
            self.saved_per_class = {}

    def summarize_stage(self, stage, stage_loss) -> dict:
        """Plain-float summary of the stage: loss and every metric mean (JSON/meta safe)."""
        # Under DDP the loss and the metrics are those of every process's clips.
        summary = {"loss": self.stage_loss_over_processes(stage_loss)}
        if stage != sb.Stage.TRAIN and self.metric_accumulator is not None:
            summary.update(self.metric_accumulator.summarize())
            summary["mask_input_dependence"] = self.mask_dependence.summarize()
        return summary

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the stage; at TEST write ``test_metrics.json`` into ``metrics_folder``."""
        summary = self.summarize_stage(stage, stage_loss)
        self.last_summary = summary
        if stage == sb.Stage.TRAIN:
            self.train_stats = summary
        elif stage == sb.Stage.VALID:
            self.on_valid_end(summary, epoch)
        elif stage == sb.Stage.TEST:
            self.hparams.train_logger.log_stats(
                stats_meta={"metrics_folder": str(self.metrics_folder)}, test_stats=summary
            )
            if sb.utils.distributed.if_main_process():
                self.write_metrics(summary)

    def on_valid_end(self, summary: dict, epoch) -> None:
        """After validation: trainable interpreters log, anneal and checkpoint here."""

    def write_metrics(self, summary: dict, filename: str = "test_metrics.json") -> Path:
        """Write the metric summary as JSON, atomically; returns the path."""
        self.metrics_folder.mkdir(parents=True, exist_ok=True)
        path = self.metrics_folder / filename
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
        logger.info("Wrote %s", path)
        return path
