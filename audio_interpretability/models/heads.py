"""Classification heads, loading the published ESC-50 checkpoints strictly.

* :class:`LinearHead` is ``speechbrain.nnet.linear.Linear`` (keys ``w.weight``, ``w.bias``),
  the head on CNN14's 2048-d embedding. The published CNN14 head is a plain
  ``torch.nn.Linear(2048, 50)`` (keys ``weight``, ``bias``):
  :meth:`LinearHead.convert_published_state_dict` renames them.
* :class:`CosineHead` is ``speechbrain.lobes.models.ECAPA_TDNN.Classifier`` (keys ``weight``
  and, with ``lin_blocks: 1``, ``blocks.0.norm.*`` / ``blocks.1.w.*``), the head on FocalNet /
  ViT embeddings; its state dict *is* the published one. That module outputs cosine
  similarities in [-1, 1]; we multiply them by ``scale`` (the additive-angular-margin scale
  used to train it, 30) so that a softmax of the logits gives meaningful probabilities for the
  metrics (``scale: 1.0`` gives the published recipe's raw cosines).

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

    def convert_published_state_dict(self, state: dict) -> dict:
        """Rename a ``torch.nn.Linear`` state dict (``weight``, ``bias``: the published CNN14
        head) to this head's keys; any other state dict is returned unchanged.

        Example
        -------
        >>> head = LinearHead(input_size=4, n_classes=3)
        >>> published = torch.nn.Linear(4, 3)
        >>> head.load_state_dict(head.convert_published_state_dict(published.state_dict()))
        <All keys matched successfully>
        """
        if set(state) != {"weight", "bias"}:
            return state
        return {"w.weight": state["weight"], "w.bias": state["bias"]}


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
    lin_blocks : int
        BatchNorm + Linear blocks before the cosine layer (ECAPA ``Classifier.lin_blocks``):
        0 (ours), 1 (SpeechBrain's released FocalNet / ViT heads).
    lin_neurons : int
        Output size of those blocks (192 in the released heads); unused when ``lin_blocks``
        is 0.

    Example
    -------
    >>> head = CosineHead(input_size=16, n_classes=5)
    >>> logits = head(torch.randn(3, 16))
    >>> logits.shape, bool(logits.abs().max() <= 30.0 + 1e-4)
    (torch.Size([3, 5]), True)
    >>> CosineHead(input_size=16, n_classes=5, lin_blocks=1).eval()(torch.randn(3, 16)).shape
    torch.Size([3, 5])
    """

    def __init__(
        self,
        input_size: int,
        n_classes: int,
        scale: float = 30.0,
        lin_blocks: int = 0,
        lin_neurons: int = 192,
    ):
        super().__init__(
            input_size=input_size,
            lin_blocks=lin_blocks,
            lin_neurons=lin_neurons,
            out_neurons=n_classes,
        )
        self.n_classes = n_classes
        self.scale = scale
        self.lin_blocks = lin_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, n_classes) scaled cosine logits."""
        return super().forward(x.unsqueeze(1)).squeeze(1) * self.scale

    def convert_published_state_dict(self, state: dict) -> dict:
        """Return ``state`` unchanged (the published ECAPA ``Classifier`` layout is ours), or
        raise a ValueError naming the fix when its number of linear blocks differs.
        """
        blocks = {int(key.split(".")[1]) for key in state if key.startswith("blocks.")}
        ckpt_lin_blocks = (max(blocks) + 1) // 2 if blocks else 0  # 2 modules per block
        if ckpt_lin_blocks != self.lin_blocks:
            raise ValueError(
                f"the checkpoint is an ECAPA Classifier head with lin_blocks={ckpt_lin_blocks} "
                f"(SpeechBrain's released FocalNet / ViT heads have lin_blocks=1: BatchNorm + "
                f"Linear to 192 before the cosine layer) but this CosineHead has "
                f"lin_blocks={self.lin_blocks}; build the head with lin_blocks: "
                f"{ckpt_lin_blocks} (see docs/CLASSIFIERS.md)."
            )
        return state
