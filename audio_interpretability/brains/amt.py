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
the overlap test of the published recipe (interpret a mixture of two clips of different
classes), batched, with ground-truth scoring on data that has stems.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from audio_interpretability import metrics as M
from audio_interpretability.brains.interpreter import InterpreterBrain, MaskOutput
from audio_interpretability.features import Spectrogram
from audio_interpretability.models.base import ClassifierOutput
from audio_interpretability.models.image_input import image_to_spectrogram

logger = logging.getLogger(__name__)

__all__ = [
    "OVERLAP_TYPES",
    "InterpreterESC50Brain",
    "OverlapPairs",
    "normalize_per_sample",
    "overlap_pairs",
    "overlap_type_for",
    "overlap_weights",
    "quantile_mask",
]

#: Ways of overlapping two clips in the overlap test (see :func:`overlap_weights`).
OVERLAP_TYPES = ("mixture", "concat")


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
# Overlap test helpers
# --------------------------------------------------------------------------------------------
def overlap_weights(
    lengths: torch.Tensor,
    n_samples: int,
    overlap_type: str,
    mix_weights: Sequence[float] = (0.8, 0.2),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weights ``(w1, w2)`` such that the overlap is ``w1 * s1 + w2 * s2``.

    * ``"mixture"``: ``w1 = mix_weights[0]``, ``w2 = mix_weights[1]`` everywhere (published:
      0.8 and 0.2 of two peak-normalised clips).
    * ``"concat"``: the first half of s1 then the second half of s2: ``w1 = 1[t < L // 2]``,
      ``w2 = 1 - w1`` for t < L, with L each item's true length (padding gets 0).

    Arguments
    ---------
    lengths : torch.Tensor
        (B,) number of valid samples of each s1 (padding excluded).
    n_samples : int
        Padded length T of the batch.
    overlap_type : str
        ``"mixture"`` or ``"concat"``.
    mix_weights : sequence of float
        The two weights of ``"mixture"``.

    Returns
    -------
    tuple of torch.Tensor
        ``(w1, w2)``, each (B, T) float32 on ``lengths``'s device.

    Example
    -------
    >>> w1, w2 = overlap_weights(torch.tensor([4, 2]), 4, "concat")
    >>> w1
    tensor([[1., 1., 0., 0.],
            [1., 0., 0., 0.]])
    >>> w2
    tensor([[0., 0., 1., 1.],
            [0., 1., 0., 0.]])
    """
    t = torch.arange(n_samples, device=lengths.device)[None, :]  # (1, T)
    valid = (t < lengths[:, None]).float()  # (B, T)
    if overlap_type == "mixture":
        if len(mix_weights) != 2:
            raise ValueError(
                f"overlap_mix_weights must hold two weights (s1, s2), got {list(mix_weights)}; "
                "e.g. [0.8, 0.2]."
            )
        return valid * float(mix_weights[0]), valid * float(mix_weights[1])
    if overlap_type == "concat":
        first = (t < (lengths[:, None] // 2)).float()  # (B, T)
        return first, valid - first
    raise ValueError(f"Unknown overlap_type {overlap_type!r}; choose one of {list(OVERLAP_TYPES)}.")


def overlap_type_for(concat_sources: bool) -> str:
    """The ``overlap_type`` of the published ``concat_sources`` flag.

    Published: ``concat_sources: True`` overlaps the first half of s1 with the second half of
    s2, ``False`` mixes them 0.8 / 0.2.

    Example
    -------
    >>> overlap_type_for(True), overlap_type_for(False)
    ('concat', 'mixture')
    """
    return "concat" if concat_sources else "mixture"


def overlap_pairs(labels: Sequence) -> list[tuple[int, int]]:
    """Pair every clip with the next clip (cyclically) of a different class.

    Arguments
    ---------
    labels : sequence
        Class of each clip, in dataset order.

    Returns
    -------
    list of tuple of int
        ``(i, j)`` for every i: s1 = clip i, s2 = clip j with ``labels[j] != labels[i]``.

    Example
    -------
    >>> overlap_pairs(["dog", "dog", "cat", "rain"])
    [(0, 2), (1, 2), (2, 3), (3, 0)]
    """
    n = len(labels)
    if len(set(labels)) < 2:
        raise ValueError(
            "The overlap test mixes clips of two different classes but the test set has "
            f"{len(set(labels))} class(es) in {n} clip(s); use a test fold with at least two "
            "classes or set --overlap_test False."
        )
    pairs = []
    for i in range(n):
        j = next(
            (i + d) % n for d in range(1, n) if labels[(i + d) % n] != labels[i]
        )  # exists: two classes at least
        pairs.append((i, j))
    return pairs


class OverlapPairs(torch.utils.data.Dataset):
    """Dataset of ``(item_i, item_j)`` pairs of another dataset, for the overlap test.

    Arguments
    ---------
    dataset : torch.utils.data.Dataset
        Dataset of dict items (e.g. a SpeechBrain ``DynamicItemDataset``).
    pairs : sequence of tuple of int
        Index pairs (see :func:`overlap_pairs`).

    Example
    -------
    >>> data = [{"id": "a", "sig": torch.zeros(3)}, {"id": "b", "sig": torch.ones(2)}]
    >>> b1, b2 = OverlapPairs.collate([OverlapPairs(data, [(0, 1), (1, 0)])[0]])
    >>> b1.id, b2.sig.data.shape
    (['a'], torch.Size([1, 2]))
    """

    def __init__(self, dataset, pairs: Sequence[tuple[int, int]]):
        self.dataset = dataset
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[dict, dict]:
        i, j = self.pairs[index]
        return self.dataset[i], self.dataset[j]

    @staticmethod
    def collate(items: list[tuple[dict, dict]]) -> tuple[PaddedBatch, PaddedBatch]:
        """Collate pairs into two :class:`PaddedBatch` (first sources, second sources)."""
        return PaddedBatch([a for a, _ in items]), PaddedBatch([b for _, b in items])


def _fit_length(x: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Crop or zero-pad (B, T') to (B, n_samples)."""
    if x.shape[1] >= n_samples:
        return x[:, :n_samples]
    return torch.nn.functional.pad(x, (0, n_samples - x.shape[1]))


def _mass_on(mask: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Fraction of each sample's mask mass inside ``region`` (B,); 0 for an empty mask."""
    m = mask.float().reshape(mask.shape[0], -1)  # (B, N)
    g = region.float().reshape(region.shape[0], -1)
    total = m.sum(dim=1)
    return torch.where(
        total > 0, (m * g).sum(dim=1) / total.clamp_min(1e-30), torch.zeros_like(total)
    )


# --------------------------------------------------------------------------------------------
# The Brain
# --------------------------------------------------------------------------------------------
class InterpreterESC50Brain(InterpreterBrain):
    """AMT interpreter: threshold the classifier's own saliency maps into a binary mask.

    On top of the hparams of :class:`InterpreterBrain` it reads ``quantile`` (per-sample
    threshold of the saliency, 0.9 keeps 10 % of the bins) and ``saliency_options`` (kwargs of
    the backbone's ``saliency``: FocalNet ``stages`` / ``aggregation``, ViT ``layers`` /
    ``method``); :meth:`evaluate_overlap` also reads ``overlap_type``, ``overlap_mix_weights``
    and ``n_saved_interpretations``. No training: the interpreter loss is zero.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.train_logger import FileTrainLogger
    >>> from audio_interpretability.features import Frontend
    >>> from audio_interpretability.models import AudioClassifier, CosineHead
    >>> from audio_interpretability.models.focalnet import FocalNet
    >>> backbone = FocalNet.from_config("tiny-cpu")
    >>> folder = tempfile.mkdtemp()
    >>> hparams = dict(
    ...     frontend=Frontend(), model=AudioClassifier(backbone, CosineHead(192, 3)),
    ...     embedding_model_path=None, classifier_model_path=None, output_folder=folder,
    ...     seed=0, save_interpretations=False, n_saved_interpretations=0,
    ...     add_wham_noise=False, wham_folder=None, wham_split="tt", wham_snr_db=0.0,
    ...     random_baseline=True, loc_threshold=0.5,
    ...     train_logger=FileTrainLogger(folder + "/log.txt"),
    ...     quantile=0.9, saliency_options={"stages": [-1], "aggregation": "mean"},
    ... )
    >>> brain = InterpreterESC50Brain(hparams=hparams, run_opts={"device": "cpu"})
    >>> X_int, mask, phase, X = brain.interpret_computation_steps(torch.randn(2, 16000))
    >>> mask.shape, round(mask.mean().item(), 2)
    (torch.Size([2, 87, 513]), 0.1)
    """

    needs_maps = True

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

    # ------------------------------------------------------------------ overlap test
    @torch.no_grad()
    def overlap_batch(self, batch1: PaddedBatch, batch2: PaddedBatch) -> tuple[dict, dict]:
        """Interpret the overlap of two batches of clips; the mask is computed once.

        s1 and s2 (peak-normalised by the data pipeline) are combined as
        ``w1 * s1 + w2 * s2`` (:func:`overlap_weights`, hparams ``overlap_type`` and
        ``overlap_mix_weights``); s2 is cropped / zero-padded to s1's length.

        Returns
        -------
        values : dict
            Per-sample (B,) metrics: the faithfulness metrics of
            :func:`~audio_interpretability.metrics.compute_faithfulness_metrics` on the
            mixture, ``pred_is_s1`` / ``pred_is_s2`` (the classifier picks s1's / s2's class),
            and, when both batches carry stems, ``mask_on_s1_event`` / ``mask_on_s2_event``
            (fraction of the mask on the bins where that source's weighted event dominates the
            rest of the mixture), ``mask_on_pred_event`` (the same for the source whose class is
            predicted; 0 when the prediction is neither class) and ``s1_event_area`` /
            ``s2_event_area`` (fraction of all bins in each region: what a random mask of any
            sparsity scores on average).
        tensors : dict
            ``mixture``, ``s1``, ``s2`` (B, T) (weighted sources), ``spec``, ``mask``,
            ``saliency``, ``logits``, ``labels1``, ``labels2`` and, with stems, ``truth1``,
            ``truth2`` (B, frames, bins), for saving.
        """
        batch1, batch2 = batch1.to(self.device), batch2.to(self.device)
        s1, rel_lens = batch1.sig.data, batch1.sig.lengths  # (B, T), (B,)
        n_samples = s1.shape[1]
        s2 = _fit_length(batch2.sig.data, n_samples)  # (B, T)
        lengths = torch.round(rel_lens * n_samples).long()  # (B,)
        w1, w2 = overlap_weights(
            lengths, n_samples, self.hparams.overlap_type, self.hparams.overlap_mix_weights
        )
        part1, part2 = w1 * s1, w2 * s2
        mixture = part1 + part2  # (B, T)

        spec = self.preprocess(mixture)
        clf = self.classifier_forward(spec.X, return_maps=True)
        mask_out = self.make_mask(spec, clf)
        mask = mask_out.mask
        logits_in, logits_out = self.masked_passes(spec.X, [mask])
        values = M.compute_faithfulness_metrics(clf.logits, logits_in, logits_out, mask)

        labels1 = batch1.class_string_encoded.data.view(-1)
        labels2 = batch2.class_string_encoded.data.view(-1)
        pred = clf.logits.argmax(dim=-1)
        values["pred_is_s1"] = (pred == labels1).float()
        values["pred_is_s2"] = (pred == labels2).float()
        tensors = {
            "mixture": mixture,
            "s1": part1,
            "s2": part2,
            "spec": spec,
            "mask": mask,
            "saliency": mask_out.extras["saliency"],
            "logits": clf.logits,
            "labels1": labels1,
            "labels2": labels2,
        }
        if hasattr(batch1, "event_sig") and hasattr(batch2, "event_sig"):
            from audio_interpretability.data.synthetic import ground_truth_mask

            event1 = w1 * batch1.event_sig.data
            event2 = w2 * _fit_length(batch2.event_sig.data, n_samples)
            frontend = self.hparams.frontend
            truth1 = ground_truth_mask(event1, mixture - event1, frontend)
            truth2 = ground_truth_mask(event2, mixture - event2, frontend)
            on1, on2 = _mass_on(mask, truth1), _mass_on(mask, truth2)
            values["mask_on_s1_event"] = on1
            values["mask_on_s2_event"] = on2
            values["mask_on_pred_event"] = torch.where(
                pred == labels1, on1, torch.where(pred == labels2, on2, torch.zeros_like(on1))
            )
            values["s1_event_area"] = truth1.float().reshape(truth1.shape[0], -1).mean(dim=1)
            values["s2_event_area"] = truth2.float().reshape(truth2.shape[0], -1).mean(dim=1)
            tensors["truth1"], tensors["truth2"] = truth1, truth2
        return values, tensors

    def evaluate_overlap(self, dataset, loader_kwargs: dict | None = None) -> dict:
        """Overlap test: interpret mixtures of two test clips of different classes.

        Every clip i is s1 once, paired with the next clip of another class as s2
        (:func:`overlap_pairs`). Batches of pairs go through :meth:`overlap_batch`; the first
        ``n_saved_interpretations`` are saved under ``<output_folder>/overlap/`` (mixture,
        weighted sources, interpretation WAVs and a PNG), and the mean of every metric goes
        to ``<output_folder>/overlap_metrics.json``. Under DDP each process takes a shard of
        the pairs and the summary is gathered (call it on every process).

        Arguments
        ---------
        dataset : speechbrain.dataio.dataset.DynamicItemDataset
            The test set (items with ``sig``, ``class_string``, ``class_string_encoded`` and,
            for ground-truth scores, ``event_sig``).
        loader_kwargs : dict, optional
            ``batch_size`` and ``num_workers`` of the pair loader (other keys are ignored).

        Returns
        -------
        dict
            The metric summary written to ``overlap_metrics.json``.
        """
        loader_kwargs = dict(loader_kwargs or {})
        with dataset.output_keys_as(["class_string"]):
            labels = [dataset[i]["class_string"] for i in range(len(dataset))]
        pairs = overlap_pairs(labels)
        ddp = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if ddp else 0
        world = torch.distributed.get_world_size() if ddp else 1
        loader = torch.utils.data.DataLoader(
            OverlapPairs(dataset, pairs[rank::world]),
            batch_size=int(loader_kwargs.get("batch_size", 1)),
            num_workers=int(loader_kwargs.get("num_workers", 0)),
            shuffle=False,
            collate_fn=OverlapPairs.collate,
        )
        self.hparams.model.eval()
        accumulator = M.MetricAccumulator()
        saved = 0
        for batch1, batch2 in loader:
            with self.evaluation_ctx:
                values, tensors = self.overlap_batch(batch1, batch2)
            accumulator.update(values)
            budget = int(self.hparams.n_saved_interpretations) - saved
            if self.hparams.save_interpretations and budget > 0 and rank == 0:
                saved += self._save_overlap(batch1, batch2, tensors, budget)
        summary = accumulator.summarize()
        if sb.utils.distributed.if_main_process():
            self.write_metrics(summary, "overlap_metrics.json")
        return summary

    def _save_overlap(self, batch1, batch2, t: dict, budget: int) -> int:
        """Save mixture / sources / interpretation WAVs and a PNG for up to ``budget`` pairs."""
        from audio_interpretability import viz

        n = min(budget, t["mixture"].shape[0])
        spec, mask = t["spec"], t["mask"]
        length = t["mixture"].shape[1]
        X_int = mask[:n] * spec.X[:n]
        wav_int = self.hparams.frontend.invert(torch.expm1(X_int), spec.phase[:n], length)
        preds = t["logits"].argmax(dim=-1)
        sr = self.hparams.frontend.sample_rate
        folder = self.metrics_folder / "overlap"
        for i in range(n):
            name = (
                f"{batch1.id[i]}+{batch2.id[i]}_true-{self.class_name(t['labels1'][i])}"
                f"+{self.class_name(t['labels2'][i])}_pred-{self.class_name(preds[i])}"
            )
            panels = [
                ("mixture log1p|STFT|", spec.X[i]),
                ("saliency", t["saliency"][i]),
                ("mask", mask[i]),
                ("interpretation M*X", X_int[i]),
            ]
            if "truth1" in t:
                panels += [("s1 event bins", t["truth1"][i]), ("s2 event bins", t["truth2"][i])]
            panels = [(title, p.detach().float().cpu()) for title, p in panels]
            # Inputs are checked by the plot before any file is written.
            viz.plot_interpretation(
                folder / name / f"{name}.png",
                panels,
                suptitle=name,
                sample_rate=sr,
                hop_samples=self.hparams.frontend.hop_samples,
            )
            for key, wav in (
                ("mixture", t["mixture"][i]),
                ("s1", t["s1"][i]),
                ("s2", t["s2"][i]),
                ("interpretation", wav_int[i]),
            ):
                viz.save_wav(folder / name / f"{key}.wav", wav.float().cpu(), sr)
        return n
