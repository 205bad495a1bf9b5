"""Interpretation metrics as pure, batched, on-device functions (one value per sample).

Every function takes batched tensors whose first dimension is the batch ``B`` and returns a
float32 tensor of shape ``(B,)`` on the input's device. Inputs may be any floating dtype
(bf16 / fp16 included): everything is computed in float32. Nothing here runs a model or
goes through NumPy; the caller computes the three classifier passes once per batch and hands
over the logits (see :func:`compute_faithfulness_metrics`).

Notation (see ``docs/METRICS.md`` for the full definitions and edge cases)::

    X      (B, frames, bins)  log1p magnitude spectrogram of the input
    M      (B, frames, bins)  interpretation mask in [0, 1]
    p      = softmax(f(X))             (B, K) probabilities on the input
    c      = argmax p                  (B,)   the classifier's own decision (not the label);
                                              ties go to the first maximal class
    p_in   = softmax(f(M * X))         masked-in probabilities
    p_out  = softmax(f((1 - M) * X))   masked-out probabilities

    AI      = 100 * 1[p_in_c > p_c]                         higher is better
    AD      = 100 * max(0, p_c - p_in_c) / p_c              lower is better
    AG      = 100 * max(0, p_in_c - p_c) / (1 - p_c)        higher is better (0 when p_c = 1)
    FF      = p_c - p_out_c                                 higher is better
    fid_in  = 1[argmax p_in = c]                            higher is better
    in_drop = p_c - p_in_c                                  lower is better
    SPS     = Gini(|M| + eps)                               higher is sparser
    COMP    = entropy((|M| + eps) / sum(|M| + eps))         lower is simpler

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

#: Added to every absolute mask value before SPS and COMP (quantus' ``Sparseness`` adds 1e-7).
MASK_EPS = 1e-7

__all__ = [
    "MASK_EPS",
    "MaskDependence",
    "MetricAccumulator",
    "accuracy",
    "average_drop",
    "average_gain",
    "average_increase",
    "complexity",
    "compute_faithfulness_metrics",
    "faithfulness",
    "input_fidelity",
    "localization_metrics",
    "masked_in_drop",
    "profile_correlation",
    "random_mask_like",
    "sparseness",
    "swap_partners",
]


# --------------------------------------------------------------------------------------------
# Input checks and helpers
# --------------------------------------------------------------------------------------------
def _check_probs(name: str, probs: torch.Tensor) -> None:
    if probs.dim() != 2:
        raise ValueError(
            f"{name} must be (batch, n_classes) probabilities, got shape {tuple(probs.shape)}; "
            "reshape it to (B, K)."
        )
    if not torch.is_floating_point(probs):
        raise ValueError(f"{name} must be a floating-point tensor, got {probs.dtype}.")
    row_sums = probs.float().sum(dim=-1)
    if not bool(torch.all((row_sums - 1.0).abs() < 1e-2) & torch.all(probs >= 0)):
        raise ValueError(
            f"{name} rows must be probabilities (non-negative, summing to 1); pass "
            "softmax(logits), or use compute_faithfulness_metrics(...) which takes logits."
        )


def _check_same_shape(ref_name: str, ref: torch.Tensor, name: str, other: torch.Tensor) -> None:
    if ref.shape != other.shape:
        raise ValueError(
            f"{name} has shape {tuple(other.shape)} but {ref_name} has shape "
            f"{tuple(ref.shape)}; pass tensors of the same shape (same batch and classes)."
        )


def _resolve_pred(probs: torch.Tensor, pred: torch.Tensor | None) -> torch.Tensor:
    """The class each metric is read at: ``pred`` if given, else ``argmax probs`` (B,)."""
    if pred is None:
        return probs.argmax(dim=-1)
    pred = pred.reshape(-1).long()
    if pred.shape[0] != probs.shape[0]:
        raise ValueError(
            f"pred has {pred.shape[0]} entries but the batch has {probs.shape[0]}; "
            "pass one class index per sample."
        )
    return pred


def _at(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather ``probs[b, index[b]]`` in float32: (B, K), (B,) -> (B,)."""
    return probs.float().gather(1, index.to(probs.device).unsqueeze(1)).squeeze(1)


def _flat_abs_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, ...) mask -> (B, N) float32 absolute values."""
    if mask.dim() < 2:
        raise ValueError(
            f"mask must be batched (B, ...) with at least 2 dims, got shape {tuple(mask.shape)}; "
            "add the batch dimension (mask.unsqueeze(0))."
        )
    if mask.numel() == 0:
        raise ValueError(f"mask is empty (shape {tuple(mask.shape)}); pass a non-empty mask.")
    return mask.detach().float().reshape(mask.shape[0], -1).abs()  # (B, N)


# --------------------------------------------------------------------------------------------
# Faithfulness metrics from probabilities (one softmax is done by the caller)
# --------------------------------------------------------------------------------------------
def _ai(p_c: torch.Tensor, p_in_c: torch.Tensor) -> torch.Tensor:
    return (p_in_c > p_c).float() * 100.0


def _ad(p_c: torch.Tensor, p_in_c: torch.Tensor) -> torch.Tensor:
    # p_c > 0 always (softmax of finite logits); clamp guards underflow of tiny probabilities.
    return (p_c - p_in_c).clamp_min(0.0) / p_c.clamp_min(torch.finfo(torch.float32).tiny) * 100.0


def _ag(p_c: torch.Tensor, p_in_c: torch.Tensor) -> torch.Tensor:
    headroom = 1.0 - p_c  # (B,) >= 0; exactly 0 when the softmax saturates at p_c = 1
    gain = (p_in_c - p_c).clamp_min(0.0)
    safe = headroom.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(headroom > 0, gain / safe, torch.zeros_like(gain)) * 100.0


def average_increase(
    probs: torch.Tensor, probs_in: torch.Tensor, pred: torch.Tensor | None = None
) -> torch.Tensor:
    """Average Increase (AI, %): did masking-in raise the decided class's probability?

    ``AI = 100 * 1[p_in_c > p_c]`` per sample. Higher is better.

    Arguments
    ---------
    probs : torch.Tensor
        (B, K) probabilities on the input, ``softmax(f(X))``.
    probs_in : torch.Tensor
        (B, K) probabilities on the masked-in input, ``softmax(f(M * X))``.
    pred : torch.Tensor, optional
        (B,) class index to read; default ``argmax probs`` (the first maximum on ties).

    Returns
    -------
    torch.Tensor
        (B,) float32 values in {0, 100}.

    Example
    -------
    >>> p = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    >>> p_in = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    >>> average_increase(p, p_in)
    tensor([100.,   0.])
    """
    _check_probs("probs", probs)
    _check_same_shape("probs", probs, "probs_in", probs_in)
    c = _resolve_pred(probs, pred)
    return _ai(_at(probs, c), _at(probs_in, c))


def average_drop(
    probs: torch.Tensor, probs_in: torch.Tensor, pred: torch.Tensor | None = None
) -> torch.Tensor:
    """Average Drop (AD, %): relative loss of the decided class's probability when masked-in.

    ``AD = 100 * max(0, p_c - p_in_c) / p_c`` per sample. Lower is better. The softmax is
    applied once (the published recipe applies it to already-softmaxed outputs).

    Arguments
    ---------
    probs : torch.Tensor
        (B, K) probabilities on the input.
    probs_in : torch.Tensor
        (B, K) probabilities on the masked-in input.
    pred : torch.Tensor, optional
        (B,) class index to read; default ``argmax probs``.

    Returns
    -------
    torch.Tensor
        (B,) float32 values in [0, 100].

    Example
    -------
    >>> p = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    >>> p_in = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    >>> average_drop(p, p_in)
    tensor([75.,  0.])
    """
    _check_probs("probs", probs)
    _check_same_shape("probs", probs, "probs_in", probs_in)
    c = _resolve_pred(probs, pred)
    return _ad(_at(probs, c), _at(probs_in, c))


def average_gain(
    probs: torch.Tensor, probs_in: torch.Tensor, pred: torch.Tensor | None = None
) -> torch.Tensor:
    """Average Gain (AG, %): gain of the decided class's probability, relative to its headroom.

    ``AG = 100 * max(0, p_in_c - p_c) / (1 - p_c)`` per sample. Higher is better. When
    ``p_c = 1`` (saturated softmax) no gain is possible and AG is defined as 0.

    Arguments
    ---------
    probs : torch.Tensor
        (B, K) probabilities on the input.
    probs_in : torch.Tensor
        (B, K) probabilities on the masked-in input.
    pred : torch.Tensor, optional
        (B,) class index to read; default ``argmax probs``.

    Returns
    -------
    torch.Tensor
        (B,) float32 values in [0, 100].

    Example
    -------
    >>> p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    >>> p_in = torch.tensor([[0.75, 0.25], [1.0, 0.0]])
    >>> average_gain(p, p_in)
    tensor([50.,  0.])
    """
    _check_probs("probs", probs)
    _check_same_shape("probs", probs, "probs_in", probs_in)
    c = _resolve_pred(probs, pred)
    return _ag(_at(probs, c), _at(probs_in, c))


def faithfulness(
    probs: torch.Tensor, probs_out: torch.Tensor, pred: torch.Tensor | None = None
) -> torch.Tensor:
    """Faithfulness on spectra (FF): probability lost when the mask is removed (masked-out).

    ``FF = p_c - p_out_c`` per sample, signed, in [-1, 1]. Higher is better.

    Arguments
    ---------
    probs : torch.Tensor
        (B, K) probabilities on the input.
    probs_out : torch.Tensor
        (B, K) probabilities on the masked-out input ``(1 - M) * X``.
    pred : torch.Tensor, optional
        (B,) class index to read; default ``argmax probs``.

    Returns
    -------
    torch.Tensor
        (B,) float32.

    Example
    -------
    >>> p = torch.tensor([[0.75, 0.25]])
    >>> p_out = torch.tensor([[0.25, 0.75]])
    >>> faithfulness(p, p_out)
    tensor([0.5000])
    """
    _check_probs("probs", probs)
    _check_same_shape("probs", probs, "probs_out", probs_out)
    c = _resolve_pred(probs, pred)
    return _at(probs, c) - _at(probs_out, c)


def masked_in_drop(
    probs: torch.Tensor, probs_in: torch.Tensor, pred: torch.Tensor | None = None
) -> torch.Tensor:
    """Masked-in probability drop ``p_c - p_in_c`` (the "faithfulness" of the FocalNet/AMT paper).

    Signed, in [-1, 1]. Lower is better (negative: the masked-in input is *more* confident).

    Arguments
    ---------
    probs : torch.Tensor
        (B, K) probabilities on the input.
    probs_in : torch.Tensor
        (B, K) probabilities on the masked-in input.
    pred : torch.Tensor, optional
        (B,) class index to read; default ``argmax probs``.

    Returns
    -------
    torch.Tensor
        (B,) float32.

    Example
    -------
    >>> masked_in_drop(torch.tensor([[0.75, 0.25]]), torch.tensor([[0.5, 0.5]]))
    tensor([0.2500])
    """
    _check_probs("probs", probs)
    _check_same_shape("probs", probs, "probs_in", probs_in)
    c = _resolve_pred(probs, pred)
    return _at(probs, c) - _at(probs_in, c)


def input_fidelity(
    probs: torch.Tensor, probs_in: torch.Tensor, pred: torch.Tensor | None = None
) -> torch.Tensor:
    """Input fidelity (Fid-In): does the masked-in input keep the decision?

    ``fid_in = 1[argmax p_in = c]`` per sample (ties: the first maximal class wins, as in
    ``torch.argmax``). Higher is better.

    Arguments
    ---------
    probs : torch.Tensor
        (B, K) probabilities (or logits: only the argmax is used) on the input.
    probs_in : torch.Tensor
        (B, K) probabilities (or logits) on the masked-in input.
    pred : torch.Tensor, optional
        (B,) decided class; default ``argmax probs``.

    Returns
    -------
    torch.Tensor
        (B,) float32 values in {0, 1}.

    Example
    -------
    >>> input_fidelity(torch.tensor([[0.6, 0.4], [0.6, 0.4]]), torch.tensor([[0.7, 0.3], [0.1, 0.9]]))
    tensor([1., 0.])
    """
    _check_same_shape("probs", probs, "probs_in", probs_in)
    c = _resolve_pred(probs, pred)
    return (probs_in.argmax(dim=-1) == c.to(probs_in.device)).float()


def accuracy(logits_or_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample classification accuracy ``1[argmax p = label]`` (mean = accuracy in [0, 1]).

    Arguments
    ---------
    logits_or_probs : torch.Tensor
        (B, K) logits or probabilities (only the argmax is used; ties: first maximum).
    labels : torch.Tensor
        (B,) or (B, 1) integer class labels (SpeechBrain's ``class_string_encoded`` is (B, 1)).

    Returns
    -------
    torch.Tensor
        (B,) float32 values in {0, 1}.

    Example
    -------
    >>> accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([[0], [0]]))
    tensor([1., 0.])
    """
    if logits_or_probs.dim() != 2:
        raise ValueError(
            f"expected (batch, n_classes) scores, got shape {tuple(logits_or_probs.shape)}."
        )
    labels = labels.reshape(-1)
    if labels.shape[0] != logits_or_probs.shape[0]:
        raise ValueError(
            f"labels has {labels.shape[0]} entries for a batch of {logits_or_probs.shape[0]}; "
            "pass one label per sample, shape (B,) or (B, 1)."
        )
    return (logits_or_probs.argmax(dim=-1) == labels.to(logits_or_probs.device).long()).float()


# --------------------------------------------------------------------------------------------
# Mask-only metrics
# --------------------------------------------------------------------------------------------
def sparseness(mask: torch.Tensor, eps: float = MASK_EPS) -> torch.Tensor:
    """Sparseness (SPS, Chalasani et al. 2020; quantus ``Sparseness``): Gini index of the mask.

    With ``a = sort_ascending(|M| + eps)`` flattened per sample (N values)::

        SPS = sum_k (2k - N - 1) a_k / (N * sum_k a_k),   k = 1..N

    In [0, 1 - 1/N]. Higher is sparser. A constant mask (all zeros or all ones) gives 0.

    Arguments
    ---------
    mask : torch.Tensor
        (B, ...) mask (any shape after the batch dimension), any floating dtype.
    eps : float
        Added to every absolute value (quantus adds 1e-7); makes the all-zero mask finite.

    Returns
    -------
    torch.Tensor
        (B,) float32.

    Example
    -------
    >>> sparseness(torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]), eps=0.0)
    tensor([0.7500, 0.0000])
    """
    a = _flat_abs_mask(mask) + eps  # (B, N)
    n = a.shape[1]
    a, _ = torch.sort(a, dim=1)
    k = torch.arange(1, n + 1, device=a.device, dtype=torch.float32)  # (N,)
    weights = 2.0 * k - n - 1.0  # (N,)
    total = a.sum(dim=1)  # (B,)
    gini = (a * weights).sum(dim=1) / (n * total.clamp_min(torch.finfo(torch.float32).tiny))
    return torch.where(total > 0, gini, torch.zeros_like(gini))


def complexity(mask: torch.Tensor, eps: float = MASK_EPS) -> torch.Tensor:
    """Complexity (COMP, Bhatt et al. 2020; quantus ``Complexity``): entropy of the mask.

    With fractional contributions ``q_i = (|M_i| + eps) / sum_j (|M_j| + eps)`` per sample::

        COMP = -sum_i q_i * ln(q_i)     (0 * ln 0 = 0)

    In [0, ln N]. Lower is simpler. The ``eps`` makes the all-zero mask finite: it is then
    uniform, ``COMP = ln N``, the same as an all-one mask (neither singles anything out).

    Arguments
    ---------
    mask : torch.Tensor
        (B, ...) mask, any floating dtype.
    eps : float
        Added to every absolute value before normalising (default 1e-7, as SPS).

    Returns
    -------
    torch.Tensor
        (B,) float32.

    Example
    -------
    >>> complexity(torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]), eps=0.0)
    tensor([0.0000, 1.3863])
    """
    a = _flat_abs_mask(mask) + eps  # (B, N)
    total = a.sum(dim=1, keepdim=True)  # (B, 1)
    n = a.shape[1]
    q = torch.where(total > 0, a / total.clamp_min(torch.finfo(torch.float32).tiny), 1.0 / n)
    return torch.special.entr(q).sum(dim=1)  # entr(x) = -x ln x, entr(0) = 0


def random_mask_like(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Chance baseline: the mask's own values, randomly permuted per sample.

    A binary mask keeps its number of ones (same sparsity), a soft mask keeps its exact value
    histogram (same SPS and COMP, same L1); only the placement becomes random. Compare an
    interpreter's metrics with those of ``random_mask_like(mask)`` to show it beats chance.
    A constant mask is returned unchanged (every permutation of it is itself).

    Arguments
    ---------
    mask : torch.Tensor
        (B, ...) mask.
    generator : torch.Generator, optional
        Random generator (on the mask's device) for reproducible baselines; default the global
        RNG.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``mask``.

    Example
    -------
    >>> m = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    >>> r = random_mask_like(m, torch.Generator().manual_seed(0))
    >>> r.shape, float(r.sum())
    (torch.Size([1, 6]), 2.0)
    """
    if mask.dim() < 1 or mask.numel() == 0:
        raise ValueError(
            f"mask must be a non-empty (B, ...) tensor, got shape {tuple(mask.shape)}."
        )
    flat = mask.reshape(mask.shape[0], -1)  # (B, N)
    if generator is not None and generator.device.type != flat.device.type:
        raise ValueError(
            f"generator is on {generator.device} but mask is on {flat.device}; create the "
            "generator with torch.Generator(device=mask.device)."
        )
    keys = torch.rand(flat.shape, generator=generator, device=flat.device)  # (B, N)
    perm = keys.argsort(dim=1)  # (B, N) a random permutation per sample
    return flat.gather(1, perm).reshape(mask.shape)


def swap_partners(pred: torch.Tensor, pool_pred: torch.Tensor) -> torch.Tensor:
    """For each clip, the index of another clip's mask with another predicted class.

    The swapped-mask baseline scores clip ``i`` with the mask of a clip ``j`` the classifier
    assigned to another class: an interpreter whose masks do not depend on the clip scores
    about as well with it as with its own mask. The pool holds the batch first (``pool_pred[:B]
    == pred``), then masks kept from earlier batches, most recent first. Clip ``i`` takes the
    first batch clip after it (cyclically) of another class, else the first earlier mask of
    another class, else none (-1). Deterministic: no random draw.

    Arguments
    ---------
    pred : torch.Tensor
        (B,) predicted classes of the batch.
    pool_pred : torch.Tensor
        (P,) predicted classes of the pool, P >= B, starting with ``pred``.

    Returns
    -------
    torch.Tensor
        (B,) long indices into the pool, -1 where no clip of another class exists.

    Example
    -------
    >>> swap_partners(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1, 2]))
    tensor([2, 2, 0])
    >>> swap_partners(torch.tensor([3, 3]), torch.tensor([3, 3]))
    tensor([-1, -1])
    """
    if pred.dim() != 1 or pool_pred.dim() != 1 or pool_pred.shape[0] < pred.shape[0]:
        raise ValueError(
            f"swap_partners expects pred (B,) and pool_pred (P >= B,), got "
            f"{tuple(pred.shape)} and {tuple(pool_pred.shape)}"
        )
    b = pred.shape[0]
    batch = pred.tolist()
    earlier = pool_pred[b:].tolist()
    out = []
    for i, c in enumerate(batch):
        order = [(i + k) % b for k in range(1, b)] + [b + k for k in range(len(earlier))]
        pool = batch + earlier
        out.append(next((j for j in order if pool[j] != c), -1))
    return torch.tensor(out, dtype=torch.long, device=pred.device)


class MaskDependence:
    """How much of the masks' variance lies between clips (``mask_input_dependence``).

    Over N masks ``m_i`` (bins flattened) with mean mask ``mu`` and grand mean ``mbar``::

        mask_input_dependence = sum_i ||m_i - mu||^2 / sum_i ||m_i - mbar||^2

    the share of the total variance that is not one fixed pattern shared by every clip: 0 for
    a constant mask or one mask repeated for every clip, 1 when the mean mask is flat. A
    collapsed interpreter (one frequency pattern for every input) scores near 0. Streaming
    (sums only); masks of another size than the first one are resized to it (area
    interpolation). Under ``torch.distributed`` the sums are all-reduced in :meth:`summarize`.

    Example
    -------
    >>> dep = MaskDependence()
    >>> dep.update(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))  # two opposite masks
    >>> dep.summarize()
    1.0
    >>> dep = MaskDependence()
    >>> dep.update(torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]]))  # the same mask twice
    >>> dep.summarize()
    0.0
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget every mask."""
        self.shape = None
        self.sum = None  # (frames, bins) sum of the masks
        self.sum_sq = 0.0  # sum of squared values, a 0-d float64 tensor after the first update
        self.count = 0

    def update(self, mask: torch.Tensor) -> None:
        """Add a batch of (B, frames, bins) masks."""
        if mask.dim() != 3 or mask.shape[0] == 0:
            raise ValueError(
                f"MaskDependence expects (B, frames, bins) masks, got {tuple(mask.shape)}"
            )
        m = mask.detach().double()
        if self.shape is None:
            self.shape = tuple(m.shape[1:])
            self.sum = torch.zeros(self.shape, dtype=torch.float64, device=m.device)
        elif tuple(m.shape[1:]) != self.shape:
            m = torch.nn.functional.interpolate(m.unsqueeze(1), size=self.shape, mode="area")[:, 0]
        self.sum = self.sum + m.sum(dim=0)
        self.sum_sq = self.sum_sq + m.pow(2).sum()
        self.count += m.shape[0]

    def summarize(self) -> float:
        """The between-clip share of variance in [0, 1] (0 when there is no variance at all)."""
        ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        shape = self.shape
        if ddp:  # a process without masks (more processes than clips) joins with zeros
            shapes = [None] * dist.get_world_size()
            dist.all_gather_object(shapes, self.shape)
            distinct = sorted({tuple(s) for s in shapes if s is not None})
            if len(distinct) > 1:  # raised by every process (none is left waiting)
                raise ValueError(
                    f"MaskDependence: the processes hold masks of shapes {distinct}; evaluate "
                    "clips of one length under DDP"
                )
            shape = distinct[0] if distinct else None
        if shape is None:
            raise ValueError("MaskDependence.summarize() before any update(); add masks first")
        total, sum_sq, count = (
            self.sum if self.sum is not None else torch.zeros(shape, dtype=torch.float64),
            torch.as_tensor(self.sum_sq, dtype=torch.float64),
            self.count,
        )
        if ddp:
            if dist.get_backend() == "nccl":
                total = total.to(torch.device("cuda", torch.cuda.current_device()))
            packed = torch.cat(
                (
                    total.flatten(),
                    sum_sq.reshape(1).to(total.device),
                    torch.tensor([float(count)], dtype=torch.float64, device=total.device),
                )
            )
            dist.all_reduce(packed)
            total, sum_sq, count = packed[:-2].view(shape), packed[-2], int(packed[-1])
        sum_sq = sum_sq.to(total.device)
        n_bins = total.numel()
        between = sum_sq - total.pow(2).sum() / count  # sum_i ||m_i - mu||^2
        overall = sum_sq - total.sum().pow(2) / (count * n_bins)  # sum_i ||m_i - mbar||^2
        if float(overall) <= 1e-12 * max(float(sum_sq), 1.0):
            return 0.0
        return float((between / overall).clamp(0.0, 1.0))


# --------------------------------------------------------------------------------------------
# Everything at once from the three classifier passes
# --------------------------------------------------------------------------------------------
def compute_faithfulness_metrics(
    logits: torch.Tensor,
    logits_in: torch.Tensor,
    logits_out: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All faithfulness and mask metrics of a batch, from the logits of three classifier passes.

    One softmax per logits tensor (in float32); the decided class ``c = argmax p`` is read once
    and shared by every metric. No model is run here.

    Arguments
    ---------
    logits : torch.Tensor
        (B, K) logits on the input X.
    logits_in : torch.Tensor
        (B, K) logits on the masked-in input ``M * X``.
    logits_out : torch.Tensor
        (B, K) logits on the masked-out input ``(1 - M) * X``.
    mask : torch.Tensor
        (B, ...) the mask M (for SPS and COMP).
    labels : torch.Tensor, optional
        (B,) or (B, 1) labels; when given, the result also holds ``"accuracy"``.

    Returns
    -------
    dict[str, torch.Tensor]
        Keys ``"accuracy"`` (only with labels), ``"AI"``, ``"AD"``, ``"AG"``, ``"FF"``,
        ``"fid_in"``, ``"SPS"``, ``"COMP"``, ``"in_drop"``; each a float32 (B,) tensor.

    Example
    -------
    >>> logits = torch.log(torch.tensor([[0.6, 0.4]]))
    >>> logits_in = torch.log(torch.tensor([[0.9, 0.1]]))
    >>> logits_out = torch.log(torch.tensor([[0.2, 0.8]]))
    >>> mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    >>> out = compute_faithfulness_metrics(logits, logits_in, logits_out, mask, torch.tensor([0]))
    >>> sorted(out)
    ['AD', 'AG', 'AI', 'COMP', 'FF', 'SPS', 'accuracy', 'fid_in', 'in_drop']
    >>> round(out["AG"].item(), 3), round(out["FF"].item(), 3)
    (75.0, 0.4)
    """
    if logits.dim() != 2:
        raise ValueError(
            f"logits must be (batch, n_classes), got shape {tuple(logits.shape)}; "
            "pass the classifier output before softmax."
        )
    _check_same_shape("logits", logits, "logits_in", logits_in)
    _check_same_shape("logits", logits, "logits_out", logits_out)
    if mask.shape[0] != logits.shape[0]:
        raise ValueError(
            f"mask has batch size {mask.shape[0]} but logits have {logits.shape[0]}; "
            "pass the mask of the same batch."
        )
    p = logits.detach().float().softmax(dim=-1)  # (B, K)
    p_in = logits_in.detach().float().softmax(dim=-1)
    p_out = logits_out.detach().float().softmax(dim=-1)
    c = p.argmax(dim=-1)  # (B,) the classifier's decision; first max on ties
    p_c, p_in_c, p_out_c = _at(p, c), _at(p_in, c), _at(p_out, c)

    out: dict[str, torch.Tensor] = {}
    if labels is not None:
        out["accuracy"] = accuracy(p, labels)
    out["AI"] = _ai(p_c, p_in_c)
    out["AD"] = _ad(p_c, p_in_c)
    out["AG"] = _ag(p_c, p_in_c)
    out["FF"] = p_c - p_out_c
    out["fid_in"] = (p_in.argmax(dim=-1) == c).float()
    out["SPS"] = sparseness(mask)
    out["COMP"] = complexity(mask)
    out["in_drop"] = p_c - p_in_c
    return out


# --------------------------------------------------------------------------------------------
# Ground-truth localisation (synthetic data with stems)
# --------------------------------------------------------------------------------------------
def _ratio(num: torch.Tensor, den: torch.Tensor, both_empty: torch.Tensor) -> torch.Tensor:
    """num / den, and where den == 0: 1 if mask and truth are both empty, else 0."""
    value = num / den.clamp_min(torch.finfo(torch.float32).tiny)
    fallback = both_empty.float()
    return torch.where(den > 0, value, fallback)


def localization_metrics(
    mask: torch.Tensor,
    truth: torch.Tensor,
    magnitude: torch.Tensor,
    threshold: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Score a mask against the ground-truth region of the class evidence (per sample).

    With ``B_M = 1[M > threshold]`` (strictly greater), ``G = 1[truth > 0.5]``, ``|S|`` the
    linear magnitude::

        loc_precision = |B_M & G| / |B_M|                         higher is better
        loc_recall    = |B_M & G| / |G|                           higher is better
        loc_iou       = |B_M & G| / |B_M | G|                     higher is better
        loc_energy_in = sum(G (M |S|)^2) / sum((M |S|)^2)         higher is better

    ``loc_energy_in`` uses the soft mask. A ratio with a zero denominator is 1 when the mask
    (binarised; for the energy: the masked energy) and the truth are both empty, and 0 when
    only one of them is: an empty mask never scores on a non-empty truth, and a mask claiming
    something on an empty truth never scores either. No NaN.

    Arguments
    ---------
    mask : torch.Tensor
        (B, frames, bins) mask in [0, 1].
    truth : torch.Tensor
        (B, frames, bins) 0/1 ground truth (e.g. ``data.synthetic.ground_truth_mask``).
    magnitude : torch.Tensor
        (B, frames, bins) linear magnitude ``|S|`` of the input.
    threshold : float
        Binarisation threshold for precision / recall / IoU.

    Returns
    -------
    dict[str, torch.Tensor]
        Keys ``"loc_precision"``, ``"loc_recall"``, ``"loc_iou"``, ``"loc_energy_in"``;
        each a float32 (B,) tensor in [0, 1].

    Example
    -------
    >>> mask = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    >>> truth = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    >>> out = localization_metrics(mask, truth, torch.ones(1, 2, 2))
    >>> [round(out[k].item(), 3) for k in ("loc_precision", "loc_recall", "loc_iou")]
    [0.5, 0.5, 0.333]
    >>> out["loc_energy_in"]
    tensor([0.5000])
    """
    if mask.dim() < 2:
        raise ValueError(f"mask must be batched (B, frames, bins), got shape {tuple(mask.shape)}.")
    _check_same_shape("mask", mask, "truth", truth)
    _check_same_shape("mask", mask, "magnitude", magnitude)
    m = mask.detach().float().reshape(mask.shape[0], -1)  # (B, N)
    g = (truth.detach().float().reshape(truth.shape[0], -1) > 0.5).float()  # (B, N)
    s = magnitude.detach().float().reshape(magnitude.shape[0], -1)  # (B, N)
    b = (m > threshold).float()

    tp = (b * g).sum(dim=1)
    n_mask = b.sum(dim=1)
    n_truth = g.sum(dim=1)
    union = n_mask + n_truth - tp
    truth_empty = n_truth == 0
    both_empty = (n_mask == 0) & truth_empty

    energy = (m * s) ** 2  # (B, N)
    e_total = energy.sum(dim=1)
    e_in = (energy * g).sum(dim=1)
    return {
        "loc_precision": _ratio(tp, n_mask, both_empty),
        "loc_recall": _ratio(tp, n_truth, both_empty),
        "loc_iou": _ratio(tp, union, both_empty),
        "loc_energy_in": _ratio(e_in, e_total, (e_total == 0) & truth_empty),
    }


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of (B, N) tensors; 0 where either row is constant."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    den = (a.pow(2).sum(dim=1) * b.pow(2).sum(dim=1)).sqrt()
    num = (a * b).sum(dim=1)
    return torch.where(den > 1e-12, num / den.clamp_min(1e-12), torch.zeros_like(num))


def profile_correlation(mask: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Does the mask follow the event in time and in frequency? (per sample)

    ``loc_time_corr`` is the Pearson correlation, over frames, of the mask's time profile
    (its mean over bins) with the ground truth's (the share of event bins in each frame);
    ``loc_freq_corr`` the same over bins. 1: the mask rises and falls with the event; 0: no
    relation, or a constant profile (a mask that is the same in every frame scores 0 in time).

    Arguments
    ---------
    mask : torch.Tensor
        (B, frames, bins) mask.
    truth : torch.Tensor
        (B, frames, bins) 0/1 ground-truth event bins.

    Returns
    -------
    dict[str, torch.Tensor]
        ``"loc_time_corr"`` and ``"loc_freq_corr"``, float32 (B,) in [-1, 1].

    Example
    -------
    >>> truth = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [0.0, 1.0]]])
    >>> out = profile_correlation(truth * 0.8, truth)
    >>> round(out["loc_time_corr"].item(), 4), round(out["loc_freq_corr"].item(), 4)
    (1.0, 1.0)
    >>> profile_correlation(torch.ones(1, 3, 2), truth)["loc_time_corr"]
    tensor([0.])
    """
    _check_same_shape("mask", mask, "truth", truth)
    if mask.dim() != 3:
        raise ValueError(f"profile_correlation expects (B, frames, bins), got {tuple(mask.shape)}")
    m = mask.detach().float()
    g = (truth.detach().float() > 0.5).float()
    return {
        "loc_time_corr": _pearson(m.mean(dim=2), g.mean(dim=2)),
        "loc_freq_corr": _pearson(m.mean(dim=1), g.mean(dim=1)),
    }


# --------------------------------------------------------------------------------------------
# Accumulation across batches and processes
# --------------------------------------------------------------------------------------------
class MetricAccumulator:
    """Gather per-sample metric values across batches (and DDP processes), then summarise.

    Values are stored detached, in float32, on the device they come from; :meth:`update`
    syncs with the host once (to reject NaN / Inf), :meth:`summarize` moves everything to the
    CPU. Under ``torch.distributed`` (initialised, world
    size > 1) :meth:`summarize` is a collective: every process must call it; per-process
    sample counts may differ (uneven last batches, a process without data).

    Arguments
    ---------
    median_keys : Iterable[str]
        Keys for which ``summarize`` also reports the median, as ``"<key>_median"``
        (mean of the two middle values for an even count).

    Example
    -------
    >>> acc = MetricAccumulator(median_keys=["AD"])
    >>> acc.update({"AD": torch.tensor([10.0, 30.0]), "AI": torch.tensor([0.0, 100.0])})
    >>> acc.update({"AD": torch.tensor([20.0]), "AI": torch.tensor([100.0])})
    >>> acc.summarize()
    {'AD': 20.0, 'AD_median': 20.0, 'AI': 66.66666666666667, 'n_samples': 3.0}
    """

    def __init__(self, median_keys: Iterable[str] = ()):
        if isinstance(median_keys, str):
            median_keys = [median_keys]
        self.median_keys = tuple(median_keys)
        self._values: dict[str, list[torch.Tensor]] = {}

    def reset(self) -> None:
        """Forget every value gathered so far."""
        self._values = {}

    def update(self, values: Mapping[str, torch.Tensor | float]) -> None:
        """Add one batch of per-sample values.

        Arguments
        ---------
        values : Mapping[str, torch.Tensor | float]
            Per key a (B,) tensor (a 0-d tensor or a Python number counts as one sample).
        """
        for key, value in values.items():
            t = torch.as_tensor(value).detach()
            if t.dim() == 0:
                t = t.reshape(1)
            if t.dim() != 1:
                raise ValueError(
                    f"metric {key!r} must be one value per sample, shape (B,), got "
                    f"{tuple(t.shape)}; reduce it per sample first."
                )
            t = t.float()
            if not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"metric {key!r} holds NaN or Inf values; fix the metric computation "
                    "(metrics must be finite)."
                )
            self._values.setdefault(key, []).append(t)

    def _local(self) -> dict[str, torch.Tensor]:
        return {k: torch.cat([v.to(vs[0].device) for v in vs]) for k, vs in self._values.items()}

    def gathered(self) -> dict[str, torch.Tensor]:
        """Every value per key, concatenated over batches and (under DDP) over processes.

        A collective under DDP. Returns float32 (N,) tensors on the CPU.
        """
        local = self._local()
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return {k: v.cpu() for k, v in local.items()}
        return _all_gather_values(local)

    def summarize(self) -> dict[str, float]:
        """Mean per key, median for ``median_keys``, and ``"n_samples"``, as Python floats.

        ``"n_samples"`` is the largest per-key count (all keys share it in normal use).
        Keys are sorted, so the dict is reproducible in JSON.
        """
        values = self.gathered()
        if not values or all(v.numel() == 0 for v in values.values()):
            raise ValueError(
                "MetricAccumulator.summarize() was called before any values were added; "
                "call update(...) with at least one batch first."
            )
        missing = [k for k in self.median_keys if k not in values]
        if missing:
            raise ValueError(
                f"median requested for {missing} but no such metric was accumulated; "
                f"accumulated keys: {sorted(values)}. Fix median_keys."
            )
        summary: dict[str, float] = {}
        for key in sorted(values):
            v = values[key].double()
            if v.numel() == 0:
                continue
            summary[key] = float(v.mean())
            if key in self.median_keys:
                summary[f"{key}_median"] = float(torch.quantile(v, 0.5))
        summary["n_samples"] = float(max(v.numel() for v in values.values()))
        return summary


def _all_gather_values(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """all_gather per-key 1-D tensors of different lengths from every process (to the CPU)."""
    comm_device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    world = dist.get_world_size()
    key_lists: list[list[str] | None] = [None] * world
    dist.all_gather_object(key_lists, sorted(local))
    keys = sorted({k for ks in key_lists for k in (ks or [])})
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        mine = local.get(key, torch.zeros(0)).to(comm_device, torch.float32)
        size = torch.tensor([mine.numel()], device=comm_device, dtype=torch.int64)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        counts = [int(s.item()) for s in sizes]
        longest = max(counts)
        if longest == 0:
            out[key] = torch.zeros(0)
            continue
        padded = torch.zeros(longest, device=comm_device, dtype=torch.float32)
        padded[: mine.numel()] = mine
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out[key] = torch.cat([p[:n] for p, n in zip(parts, counts)]).cpu()
    return out
