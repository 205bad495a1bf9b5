"""The one interface every classifier backbone implements, and the composite classifier.

Interpreters (AMT, L-MAC) and the classification recipe only talk to this interface, so they
never branch on the model type:

* ``backbone.input_from_spectrogram(X)`` turns the log1p linear spectrogram ``X`` (B, frames,
  bins), masked or not, into the backbone's own input (log1p mel for CNN14, a resized
  spectrogram "image" for FocalNet / ViT).
* ``backbone(x, return_maps=...)`` returns a :class:`BackboneOutput`: the pooled embedding and,
  on request, the intermediate maps interpreters need (CNN14 block outputs for the L-MAC
  decoder, FocalNet modulators, ViT CLS attentions).
* ``backbone.saliency(maps, **options)`` aggregates those maps into one (B, h, w) saliency map
  oriented like the spectrogram (time first, frequency second), for AMT.

For loading, ``backbone.convert_published_state_dict(state)`` maps a state dict saved by
SpeechBrain's ESC-50 recipes onto the backbone's keys (identity by default).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import torch


class BackboneOutput(NamedTuple):
    """Output of one backbone forward pass.

    Attributes
    ----------
    embedding : torch.Tensor
        (B, D) pooled embedding.
    maps : tuple of torch.Tensor
        Model-specific intermediate maps (documented by each backbone); ``()`` when
        ``return_maps=False``.
    """

    embedding: torch.Tensor
    maps: tuple


class ClassifierOutput(NamedTuple):
    """Output of :class:`AudioClassifier`.

    Attributes
    ----------
    logits : torch.Tensor
        (B, n_classes) unnormalised class scores (softmax gives probabilities).
    embedding : torch.Tensor
        (B, D) pooled embedding.
    maps : tuple of torch.Tensor
        The backbone's intermediate maps (``()`` unless requested).
    """

    logits: torch.Tensor
    embedding: torch.Tensor
    maps: tuple


class Backbone(torch.nn.Module):
    """Base class of the classifier backbones (CNN14, FocalNet, ViT).

    Subclasses set ``self.embedding_dim`` and implement the three methods below.
    """

    embedding_dim: int

    def input_from_spectrogram(self, X: torch.Tensor) -> torch.Tensor:
        """Map a (B, frames, bins) log1p magnitude spectrogram to this backbone's input."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_maps: bool = False) -> BackboneOutput:
        """Embed a batch of backbone inputs; return the intermediate maps when asked."""
        raise NotImplementedError

    def saliency(self, maps: tuple, **options) -> torch.Tensor:
        """Aggregate intermediate maps into a (B, h, w) saliency map (time, frequency)."""
        raise NotImplementedError

    def convert_published_state_dict(self, state: dict) -> dict:
        """Map a state dict saved by SpeechBrain's ESC-50 recipes onto this backbone's keys.

        :func:`~audio_interpretability.checkpoints.load_classifier` calls it before its strict
        checks. The default returns ``state`` unchanged (CNN14: same layout); FocalNet and ViT
        recognise the ``transformers`` layouts by their keys. Our own checkpoints always pass
        through unchanged.
        """
        return state


def rename_state_dict_keys(state: dict, rules: Sequence[tuple[str, str]]) -> dict:
    """Rename the keys of ``state`` with regex ``(pattern, replacement)`` rules, applied in order.

    Arguments
    ---------
    state : dict
        A state dict.
    rules : sequence of (str, str)
        ``re.sub`` pattern and replacement, each applied to every key.

    Returns
    -------
    dict
        A new state dict with the same tensors and renamed keys.

    Example
    -------
    >>> state = {"encoder.layer.0.weight": torch.zeros(1)}
    >>> list(rename_state_dict_keys(state, [(r"^encoder\\.layer\\.", "blocks.")]))
    ['blocks.0.weight']
    """
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


class AudioClassifier(torch.nn.Module):
    """Backbone + classification head, applied to a log1p linear spectrogram.

    The two parts stay separate modules so that checkpoints keep the published layout
    (``embedding_model.ckpt`` and ``classifier.ckpt``).

    Arguments
    ---------
    embedding_model : Backbone
        The backbone.
    classifier : torch.nn.Module
        Head mapping (B, D) embeddings to (B, n_classes) logits.
    """

    def __init__(self, embedding_model: Backbone, classifier: torch.nn.Module):
        super().__init__()
        self.embedding_model = embedding_model
        self.classifier = classifier

    def forward(self, X: torch.Tensor, return_maps: bool = False) -> ClassifierOutput:
        """Classify a (B, frames, bins) log1p magnitude spectrogram.

        Arguments
        ---------
        X : torch.Tensor
            (B, frames, bins) log1p magnitude (possibly masked).
        return_maps : bool
            Also return the backbone's intermediate maps.

        Returns
        -------
        ClassifierOutput
            (logits (B, C), embedding (B, D), maps).
        """
        x = self.embedding_model.input_from_spectrogram(X)
        out = self.embedding_model(x, return_maps=return_maps)
        logits = self.classifier(out.embedding)
        return ClassifierOutput(logits=logits, embedding=out.embedding, maps=out.maps)
