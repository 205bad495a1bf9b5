"""The overlap test of the published AMT recipe, as data: pairs of clips of different classes.

The published ``interpret_amt.py`` interprets a mixture ``w1 * s1 + w2 * s2`` of two test clips
of different classes (``concat_sources``: the first half of s1, then the second half of s2) and
checks where the mask falls. Here the pairing is a dataset (:class:`OverlapPairs` over
:func:`overlap_pairs`), the weights a pure function (:func:`overlap_weights`), and the test
itself (:func:`audio_interpretability.brains.evaluation.evaluate_overlap`) runs for every
interpreter.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from speechbrain.dataio.batch import PaddedBatch

__all__ = [
    "OVERLAP_TYPES",
    "OverlapPairs",
    "fit_length",
    "mass_on",
    "overlap_pairs",
    "overlap_type_for",
    "overlap_weights",
]

#: Ways of overlapping two clips in the overlap test (see :func:`overlap_weights`).
OVERLAP_TYPES = ("mixture", "concat")


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


def fit_length(x: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Crop or zero-pad (B, T') to (B, n_samples)."""
    if x.shape[1] >= n_samples:
        return x[:, :n_samples]
    return torch.nn.functional.pad(x, (0, n_samples - x.shape[1]))


def mass_on(mask: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Fraction of each sample's mask mass inside ``region`` (B,); 0 for an empty mask."""
    m = mask.float().reshape(mask.shape[0], -1)  # (B, N)
    g = region.float().reshape(region.shape[0], -1)
    total = m.sum(dim=1)
    return torch.where(
        total > 0, (m * g).sum(dim=1) / total.clamp_min(1e-30), torch.zeros_like(total)
    )
