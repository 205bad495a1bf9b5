"""Classifier backbones (CNN14, FocalNet, ViT), heads, and the L-MAC decoder."""

from audio_interpretability.models.base import (
    AudioClassifier,
    Backbone,
    BackboneOutput,
    ClassifierOutput,
)
from audio_interpretability.models.heads import CosineHead, LinearHead

__all__ = [
    "AudioClassifier",
    "Backbone",
    "BackboneOutput",
    "ClassifierOutput",
    "CosineHead",
    "LinearHead",
]
