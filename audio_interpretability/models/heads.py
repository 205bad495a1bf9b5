"""Classification heads, state-dict compatible with the published ESC-50 checkpoints.

* :class:`LinearHead` is ``speechbrain.nnet.linear.Linear`` (keys ``w.weight``, ``w.bias``),
  the head on CNN14's 2048-d embedding.
* :class:`CosineHead` is ``speechbrain.lobes.models.ECAPA_TDNN.Classifier`` (key ``weight``),
  the head on FocalNet / ViT embeddings. That module outputs cosine similarities in [-1, 1];
  we multiply them by ``scale`` (the additive-angular-margin scale used to train it, 30) so
  that a softmax of the logits gives meaningful probabilities for the metrics.

Both take (B, D) embeddings and return (B, n_classes) logits.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import torch
from speechbrain.lobes.models.ECAPA_TDNN import Classifier as _EcapaClassifier
from speechbrain.nnet.linear import Linear


class LinearHead(Linear):
    """Linear classification head.

    Arguments
    ---------
    input_size : int
        Embedding dimension D.
    n_classes : int
        Number of classes.

    Example
    -------
    >>> head = LinearHead(input_size=16, n_classes=5)
    >>> head(torch.randn(3, 16)).shape
    torch.Size([3, 5])
    """

    def __init__(self, input_size: int, n_classes: int):
        super().__init__(n_neurons=n_classes, input_size=input_size)
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, n_classes) logits."""
        return super().forward(x)


class CosineHead(_EcapaClassifier):
    """Cosine-similarity head (SpeechBrain's ECAPA ``Classifier``) returning scaled logits.

    Arguments
    ---------
    input_size : int
        Embedding dimension D.
    n_classes : int
        Number of classes.
    scale : float
        Multiplies the cosine similarities to give logits.

    Example
    -------
    >>> head = CosineHead(input_size=16, n_classes=5)
    >>> logits = head(torch.randn(3, 16))
    >>> logits.shape, bool(logits.abs().max() <= 30.0 + 1e-4)
    (torch.Size([3, 5]), True)
    """

    def __init__(self, input_size: int, n_classes: int, scale: float = 30.0):
        super().__init__(input_size=input_size, lin_blocks=0, out_neurons=n_classes)
        self.n_classes = n_classes
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, n_classes) scaled cosine logits."""
        return super().forward(x.unsqueeze(1)).squeeze(1) * self.scale
