"""Sanity checks of interpreters: does the mask depend on the model, does it rank what matters?

Two checks that any interpreter (any :class:`~audio_interpretability.brains.interpreter.
InterpreterBrain`) can be put through, on a handful of clips:

* **Cascading model-parameter randomisation** (Adebayo et al., "Sanity Checks for Saliency
  Maps", NeurIPS 2018): the classifier's layer groups (:func:`layer_groups`, from the output
  head down to the input) are re-initialised one after the other, cumulatively, on a deep copy
  of the classifier (:func:`randomized_classifiers`); after each stage the masks are recomputed
  and compared with the original masks by Spearman rank correlation
  (:func:`spearman_correlation`) and SSIM (:func:`ssim`). An interpreter whose masks survive
  the randomisation of the whole classifier explains the input, not the model. Summary: the
  correlation after full randomisation (lower is better).
* **Deletion / insertion curves** (Petsiuk et al., RISE, BMVC 2018), on the log1p spectrogram
  ``X``: the bins are ranked by the mask (most relevant first); deletion sets the top fraction
  of the bins to 0 (silence in the log1p domain), insertion starts from silence and puts X's
  top bins back, at ``n_steps + 1`` fractions 0, 1/n_steps, ..., 1; at each step the classifier
  gives the probability of the class it predicted on the whole X
  (:func:`deletion_insertion_curves`). Area under the curve (:func:`curve_auc`, trapezoid over
  the fractions): deletion lower is better, insertion higher is better. The same curves with a
  random (seeded) order are the chance reference.

Everything is seeded with private generators (the global random stream is left alone) and no
brain or classifier is modified: the randomised classifier is a deep copy, in a twin of the
brain that shares everything else (:func:`with_copied_classifier`).

Example
-------
>>> a = torch.rand(2, 20, 30)
>>> spearman_correlation(a, a)
tensor([1., 1.], dtype=torch.float64)
>>> ssim(a, a)
tensor([1., 1.])
>>> curve_auc(torch.full((1, 5), 0.3), torch.linspace(0, 1, 5))
tensor([0.3000])

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

__all__ = [
    "CurveResult",
    "LayerGroup",
    "RandomizationStage",
    "cascading_randomization",
    "curve_auc",
    "deletion_insertion",
    "deletion_insertion_curves",
    "layer_groups",
    "randomize_cascade",
    "randomize_group",
    "randomized_classifiers",
    "relevance_order",
    "spearman_correlation",
    "ssim",
    "with_copied_classifier",
]


# --------------------------------------------------------------------------------------------
# Similarity of two sets of masks
# --------------------------------------------------------------------------------------------
def spearman_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation between two batches of maps, one value per example.

    The Pearson correlation of the ranks of the flattened maps (ties get their average rank,
    as in ``scipy.stats.spearmanr``). When one of the two maps is constant the correlation is
    undefined: it is then 1 if the two maps are equal, else 0.

    Arguments
    ---------
    a, b : torch.Tensor
        (B, ...) maps of the same shape.

    Returns
    -------
    torch.Tensor
        (B,) float64 correlations in [-1, 1].

    Example
    -------
    >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    >>> spearman_correlation(a, a ** 3), spearman_correlation(a, -a)
    (tensor([1.], dtype=torch.float64), tensor([-1.], dtype=torch.float64))
    """
    if a.shape != b.shape:
        raise ValueError(f"spearman_correlation needs maps of one shape, got {a.shape}, {b.shape}")
    x = a.detach().reshape(a.shape[0], -1).double().cpu().numpy()
    y = b.detach().reshape(b.shape[0], -1).double().cpu().numpy()
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)  # (B, N) average ranks
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    constant = den == 0
    corr = (rx * ry).sum(axis=1) / np.where(constant, 1.0, den)
    equal = np.all(x == y, axis=1)
    corr = np.where(constant, equal.astype(np.float64), corr)
    return torch.from_numpy(np.clip(corr, -1.0, 1.0))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """(1, 1, size, size) normalised gaussian window."""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of two batches of 2D maps, one value per map.

    Gaussian window (``window_size``, ``sigma``: 11 and 1.5 as in the paper and
    ``skimage.metrics.structural_similarity(gaussian_weights=True)``), valid positions only,
    constants ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` for ``L = data_range``; the mean of the
    SSIM map. A map smaller than the window uses the largest odd window that fits.

    Arguments
    ---------
    a, b : torch.Tensor
        (B, H, W) maps (masks in [0, 1]: ``data_range`` 1).
    data_range : float
        The range of the values (max - min possible).
    window_size : int
        Side of the gaussian window (odd).
    sigma : float
        Standard deviation of the gaussian window.

    Returns
    -------
    torch.Tensor
        (B,) SSIM, 1 for identical maps.

    Example
    -------
    >>> a = torch.rand(2, 16, 16)
    >>> ssim(a, a).tolist(), bool(ssim(a, 1 - a)[0] < 0)
    ([1.0, 1.0], True)
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"ssim needs two (B, H, W) maps of one shape, got {a.shape}, {b.shape}")
    size = min(window_size, a.shape[1], a.shape[2])
    size -= 1 - size % 2  # odd
    window = _gaussian_window(size, sigma).to(a.device)
    x, y = a.detach().float()[:, None], b.detach().float()[:, None]  # (B, 1, H, W)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)  # (B, 1, H - size + 1, W - size + 1)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=(1, 2, 3))


# --------------------------------------------------------------------------------------------
# Cascading randomisation of the classifier
# --------------------------------------------------------------------------------------------
class LayerGroup(NamedTuple):
    """One stage of the cascading randomisation.

    Attributes
    ----------
    name : str
        The group's module path in the classifier, e.g. ``"classifier"``,
        ``"embedding_model.conv_block6"``, ``"embedding_model.blocks.3"``.
    module : torch.nn.Module
        The group (a submodule of the classifier).
    """

    name: str
    module: torch.nn.Module


def _has_parameters(module: torch.nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def layer_groups(model: torch.nn.Module) -> list[LayerGroup]:
    """The classifier's layer groups, from the output head down to the input.

    Works from the modules alone, for any :class:`~audio_interpretability.models.base.
    AudioClassifier`: first the head (``model.classifier``), then the embedding model's
    children in reverse order of registration (which is their order in the forward pass for
    our backbones), a ``ModuleList`` / ``Sequential`` of blocks expanded into its blocks (in
    reverse). Children without parameters (dropout, pooling) are left out; parameters held
    directly by the embedding model (ViT's ``cls_token`` / ``pos_embed``) form a last group
    ``"embedding_model"`` of its own (see :func:`randomize_group`).

    * CNN14: ``classifier``, ``conv_block6`` ... ``conv_block1``, ``norm0``;
    * ViT: ``classifier``, ``pooler``, ``norm``, ``blocks.N-1`` ... ``blocks.0``,
      ``patch_embed``, then its own parameters;
    * FocalNet: ``classifier``, ``norm``, ``stages.S-1`` ... ``stages.0``, ``patch_embed``.

    Arguments
    ---------
    model : torch.nn.Module
        An ``AudioClassifier`` (``embedding_model`` and ``classifier`` children).

    Returns
    -------
    list of LayerGroup
        Output head first.

    Example
    -------
    >>> from audio_interpretability.models.base import AudioClassifier
    >>> from audio_interpretability.models.cnn14 import Cnn14
    >>> from audio_interpretability.models.heads import LinearHead
    >>> model = AudioClassifier(Cnn14(emb_dim=16, base_channels=1), LinearHead(16, 3))
    >>> [g.name for g in layer_groups(model)][:3]
    ['classifier', 'embedding_model.conv_block6', 'embedding_model.conv_block5']
    >>> len(layer_groups(model))  # head, 6 blocks, norm0
    8
    """
    for part in ("embedding_model", "classifier"):
        if not isinstance(getattr(model, part, None), torch.nn.Module):
            raise ValueError(
                f"layer_groups needs an AudioClassifier (embedding_model + classifier), got "
                f"{type(model).__name__} without {part!r}; pass brain.hparams.model"
            )
    groups = [LayerGroup("classifier", model.classifier)]
    backbone = model.embedding_model
    for name, child in reversed(list(backbone.named_children())):
        if not _has_parameters(child):
            continue
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            for index, block in reversed(list(child.named_children())):
                if _has_parameters(block):
                    groups.append(LayerGroup(f"embedding_model.{name}.{index}", block))
        else:
            groups.append(LayerGroup(f"embedding_model.{name}", child))
    if next(backbone.parameters(recurse=False), None) is not None:
        groups.append(LayerGroup("embedding_model", backbone))
    return groups


def randomize_group(
    module: torch.nn.Module, generator: torch.Generator, own_only: bool = False
) -> None:
    """Re-initialise the parameters of ``module`` in place, as freshly built (seeded).

    Every submodule with a ``reset_parameters`` method (Conv, Linear, norm layers) is reset with
    it (as Quantus' model-parameter randomisation does; norm layers also forget their running
    statistics); parameters of modules without one (ViT's ``cls_token``, FocalNet's layer-scale
    ``gamma``) are redrawn: matrices Xavier-uniform, vectors N(0, 0.02^2). The draws come from a
    stream seeded by ``generator``; the global random stream is restored afterwards.

    Arguments
    ---------
    module : torch.nn.Module
        The group to re-initialise (modified in place: pass a copy).
    generator : torch.Generator
        A CPU generator; one seed is drawn from it.
    own_only : bool
        Only the parameters held directly by ``module`` (not its submodules): the last group
        of :func:`layer_groups` for backbones that hold parameters themselves.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    params = [p for p in module.parameters(recurse=not own_only)]
    devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        reset: set[int] = set()
        modules = [module] if own_only else list(module.modules())
        for sub in modules:
            if not own_only and callable(getattr(sub, "reset_parameters", None)):
                sub.reset_parameters()
                reset.update(id(p) for p in sub.parameters(recurse=False))
        for p in params:
            if id(p) in reset:
                continue
            if p.dim() >= 2:
                torch.nn.init.xavier_uniform_(p)
            else:
                torch.nn.init.normal_(p, std=0.02)


def randomize_cascade(
    model: torch.nn.Module, seed: int = 0, groups: list[str] | None = None
) -> Iterator[str]:
    """Re-initialise ``model``'s layer groups one after the other, IN PLACE; yield each name.

    At the k-th step the first k groups (of :func:`layer_groups`, head first) have been
    re-initialised (:func:`randomize_group`, draws seeded by ``seed``). Pass a copy:
    :func:`randomized_classifiers` and :func:`cascading_randomization` do.

    Arguments
    ---------
    model : torch.nn.Module
        The classifier (an ``AudioClassifier``) to randomise in place.
    seed : int
        Seed of the re-initialisation.
    groups : list of str, optional
        Only these group names, in the order of :func:`layer_groups` (default: all).

    Yields
    ------
    str
        The group just re-initialised.
    """
    available = layer_groups(model)
    if groups is not None:
        unknown = set(groups) - {g.name for g in available}
        if unknown:
            raise ValueError(
                f"unknown layer groups {sorted(unknown)}; pick from {[g.name for g in available]}"
            )
        available = [g for g in available if g.name in groups]
    generator = torch.Generator().manual_seed(seed)
    for group in available:
        own_only = group.module is model.embedding_model
        randomize_group(group.module, generator, own_only=own_only)
        yield group.name


def randomized_classifiers(
    model: torch.nn.Module, seed: int = 0, groups: list[str] | None = None
) -> Iterator[tuple[str, torch.nn.Module]]:
    """Yield ``(group name, classifier)`` with the groups re-initialised cumulatively.

    One deep copy of ``model`` is made and randomised by :func:`randomize_cascade`; ``model``
    itself is never modified; the yielded copy is the same object at every stage (randomised
    one group more).

    Arguments
    ---------
    model : torch.nn.Module
        The classifier (an ``AudioClassifier``).
    seed : int
        Seed of the re-initialisation.
    groups : list of str, optional
        Only these group names, in the order of :func:`layer_groups` (default: all).

    Yields
    ------
    name : str
        The group just re-initialised.
    classifier : torch.nn.Module
        The copy with that group and every group above it re-initialised (eval mode).
    """
    copied = copy.deepcopy(model).eval()
    for name in randomize_cascade(copied, seed=seed, groups=groups):
        yield name, copied


def with_copied_classifier(brain):
    """A twin of ``brain`` that interprets with a deep copy of its classifier.

    Every interpreter reaches its classifier through ``brain.hparams.model``
    (``classifier_forward``, AMT's saliency, PIQ's hidden map, Grad-CAM's layer). The twin
    shares everything with ``brain`` (front-end, decoder, noise, settings) except the hparams
    namespace and the classifier: a deep copy, into which any reference the brain holds to a
    part of the classifier (a cached layer, a hook target) is redirected, as ``copy.deepcopy``
    keeps the object graph. Randomising the twin's ``hparams.model`` leaves ``brain`` intact.

    Arguments
    ---------
    brain : InterpreterBrain
        Any interpreter.

    Returns
    -------
    InterpreterBrain
        The twin (same class).
    """
    model = brain.hparams.model
    inside = {id(m) for m in model.modules()}
    inside |= {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    memo = {}  # objects deepcopy must share, not copy: everything outside the classifier
    for value in [*vars(brain).values(), *vars(brain.hparams).values()]:
        if id(value) not in inside and value is not brain.hparams:
            memo[id(value)] = value
    twin = copy.deepcopy(brain, memo)
    twin.hparams.model.eval().requires_grad_(False)
    return twin


class RandomizationStage(NamedTuple):
    """The masks after one stage of the cascading randomisation vs the original masks.

    Attributes
    ----------
    group : str
        The layer group randomised last (``"original"``: no group, the masks recomputed).
    spearman : float
        Mean over the clips of the Spearman rank correlation (lower: the mask depends on the
        randomised layers, as it should).
    ssim : float
        Mean over the clips of the SSIM of the masks (lower is better, as above).
    """

    group: str
    spearman: float
    ssim: float


def _masks(brain, wavs: torch.Tensor) -> torch.Tensor:
    """(B, frames, bins) masks of ``brain`` for ``wavs`` (gradients allowed for make_mask)."""
    _, _, mask_out = brain.interpret(wavs)
    return mask_out.mask.detach().float()


def cascading_randomization(
    brain, wavs: torch.Tensor, seed: int = 0, groups: list[str] | None = None
) -> list[RandomizationStage]:
    """Cascading randomisation of ``brain``'s classifier, head first (Adebayo et al. 2018).

    The masks of ``wavs`` are computed with the original classifier, then again after each
    cumulative re-initialisation (:func:`randomize_cascade`) of the classifier of a twin of the
    brain (:func:`with_copied_classifier`), and compared with the original masks. The first
    stage, ``"original"``, recomputes the masks with the untouched classifier (1 for a
    deterministic interpreter; below 1 for a stochastic one, its noise floor). The brain and
    its classifier are left as they were.

    Arguments
    ---------
    brain : InterpreterBrain
        Any interpreter.
    wavs : torch.Tensor
        (B, T) waveforms.
    seed : int
        Seed of the re-initialisation.
    groups : list of str, optional
        The layer groups to randomise (default: all of :func:`layer_groups`).

    Returns
    -------
    list of RandomizationStage
        ``"original"``, then one per group, the last one the fully randomised classifier
        (its ``spearman`` is the summary number: lower is better).
    """
    wavs = wavs.to(brain.device)
    reference = _masks(brain, wavs)

    def stage(interpreter, name: str) -> RandomizationStage:
        masks = _masks(interpreter, wavs)
        return RandomizationStage(
            name,
            float(spearman_correlation(reference, masks).mean()),
            float(ssim(reference, masks).mean()),
        )

    stages = [stage(brain, "original")]
    twin = with_copied_classifier(brain)
    for name in randomize_cascade(twin.hparams.model, seed=seed, groups=groups):
        stages.append(stage(twin, name))
    return stages


# --------------------------------------------------------------------------------------------
# Deletion / insertion curves
# --------------------------------------------------------------------------------------------
def relevance_order(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rank of each bin by the mask, 0 for the most relevant; ties in a seeded random order.

    Arguments
    ---------
    mask : torch.Tensor
        (B, frames, bins) relevance.
    generator : torch.Generator, optional
        Breaks ties (a binary mask has many); None: a generator seeded with 0.

    Returns
    -------
    torch.Tensor
        (B, frames, bins) long ranks, a permutation of 0 .. frames * bins - 1 per example.

    Example
    -------
    >>> relevance_order(torch.tensor([[[0.1, 0.9, 0.5]]]))
    tensor([[[2, 0, 1]]])
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    flat = mask.detach().reshape(mask.shape[0], -1)  # (B, N)
    n = flat.shape[1]
    shuffle = torch.randperm(n, generator=generator).to(flat.device)  # random tie-break
    order = torch.argsort(flat[:, shuffle], dim=1, descending=True, stable=True)
    order = shuffle[order]  # (B, N): bin indices, most relevant first
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=flat.device).expand_as(order).contiguous())
    return ranks.reshape(mask.shape)


def curve_auc(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Area under (B, K + 1) curves over the fractions (K + 1,), trapezoid rule.

    Example
    -------
    >>> curve_auc(torch.tensor([[1.0, 0.0]]), torch.tensor([0.0, 1.0]))
    tensor([0.5000])
    """
    return torch.trapezoid(curve, fractions.to(curve), dim=-1)


class CurveResult(NamedTuple):
    """Deletion and insertion curves of a batch of masks.

    Attributes
    ----------
    fractions : torch.Tensor
        (K + 1,) fractions of the bins removed / inserted: 0, 1/K, ..., 1.
    deletion, insertion : torch.Tensor
        (B, K + 1) probability of the originally predicted class at each fraction.
    deletion_auc, insertion_auc : torch.Tensor
        (B,) areas under the curves (deletion: lower is better; insertion: higher).
    """

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor


@torch.no_grad()
def deletion_insertion_curves(
    classify: Callable[[torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    mask: torch.Tensor,
    n_steps: int = 10,
    generator: torch.Generator | None = None,
) -> CurveResult:
    """Deletion and insertion curves of ``mask`` on the log1p spectrogram ``X``.

    The bins are ranked by the mask (:func:`relevance_order`). At fraction ``f = k / n_steps``
    the ``ceil(f * N)`` most relevant of the ``N = frames * bins`` bins are set to 0 in ``X``
    (deletion; 0 is silence in the log1p domain) or are the only bins of ``X`` kept (insertion,
    from the silent spectrogram). The curve is the softmax probability of the class predicted
    on ``X`` itself.

    Arguments
    ---------
    classify : callable
        (B, frames, bins) log1p spectrogram -> (B, C) logits.
    X : torch.Tensor
        (B, frames, bins) log1p spectrogram.
    mask : torch.Tensor
        (B, frames, bins) relevance of each bin (higher: more relevant).
    n_steps : int
        Number of steps K (K + 1 points).
    generator : torch.Generator, optional
        Breaks ties in the ranking (see :func:`relevance_order`).

    Returns
    -------
    CurveResult
        The curves and their areas.

    Example
    -------
    >>> def classify(X):  # class 1 is certain when bin (0, 0) is loud, else even odds
    ...     loud = X[:, 0, 0] > 0.5
    ...     return torch.stack([torch.zeros_like(X[:, 0, 0]), 10.0 * loud], dim=1)
    >>> X = torch.ones(1, 2, 2)
    >>> mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    >>> out = deletion_insertion_curves(classify, X, mask, n_steps=4)
    >>> out.deletion.round(decimals=3), out.insertion[0, 0].round(decimals=3)
    (tensor([[1.0000, 0.5000, 0.5000, 0.5000, 0.5000]]), tensor(0.5000))
    """
    if X.shape != mask.shape or X.dim() != 3:
        raise ValueError(
            f"X and mask must be (B, frames, bins) of one shape, got {X.shape}, {mask.shape}"
        )
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    ranks = relevance_order(mask, generator)  # (B, frames, bins)
    n_bins = ranks[0].numel()
    fractions = torch.linspace(0.0, 1.0, n_steps + 1)
    pred = classify(X).argmax(dim=1)  # (B,)

    def prob(inputs: torch.Tensor) -> torch.Tensor:
        probs = classify(inputs).softmax(dim=1)  # (B, C)
        return probs.gather(1, pred[:, None])[:, 0]  # (B,)

    deletion, insertion = [], []
    for fraction in fractions.tolist():
        top = (ranks < math.ceil(fraction * n_bins - 1e-9)).to(X.dtype)  # (B, frames, bins)
        deletion.append(prob(X * (1.0 - top)))
        insertion.append(prob(X * top))
    deletion_t = torch.stack(deletion, dim=1).float().cpu()  # (B, K + 1)
    insertion_t = torch.stack(insertion, dim=1).float().cpu()
    return CurveResult(
        fractions,
        deletion_t,
        insertion_t,
        curve_auc(deletion_t, fractions),
        curve_auc(insertion_t, fractions),
    )


def deletion_insertion(
    brain, wavs: torch.Tensor, n_steps: int = 10, seed: int = 0
) -> dict[str, float]:
    """Deletion / insertion AUCs of ``brain``'s masks on ``wavs``, and of a random order.

    The masks come from ``brain.interpret`` (so from the spectrogram frames the mask covers);
    the classifier is ``brain.classifier_forward``.

    Arguments
    ---------
    brain : InterpreterBrain
        Any interpreter.
    wavs : torch.Tensor
        (B, T) waveforms.
    n_steps : int
        Steps of the curves.
    seed : int
        Seed of the tie-break and of the random order.

    Returns
    -------
    dict
        ``deletion_auc``, ``insertion_auc`` (means over the clips) and ``random_deletion_auc``,
        ``random_insertion_auc`` (a uniformly random order of the bins).
    """
    spec, _, mask_out = brain.interpret(wavs.to(brain.device))
    X, mask = spec.X.detach(), mask_out.mask.detach()

    def classify(inputs: torch.Tensor) -> torch.Tensor:
        return brain.classifier_forward(inputs).logits

    generator = torch.Generator().manual_seed(seed)
    ours = deletion_insertion_curves(classify, X, mask, n_steps, generator)
    random_order = torch.rand(mask.shape, generator=generator).to(mask.device)
    chance = deletion_insertion_curves(classify, X, random_order, n_steps, generator)
    return {
        "deletion_auc": float(ours.deletion_auc.mean()),
        "insertion_auc": float(ours.insertion_auc.mean()),
        "random_deletion_auc": float(chance.deletion_auc.mean()),
        "random_insertion_auc": float(chance.insertion_auc.mean()),
    }
