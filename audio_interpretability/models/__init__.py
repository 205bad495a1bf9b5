"""Classifier backbones (CNN14, FocalNet, ViT), heads, and the L-MAC decoder."""

from audio_interpretability.models.base import (
    AudioClassifier,
    Backbone,
    BackboneOutput,
    ClassifierOutput,
)
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.decoders import CNN14Decoder
from audio_interpretability.models.focalnet import FOCALNET_CONFIGS, FocalNet
from audio_interpretability.models.heads import CosineHead, LinearHead
from audio_interpretability.models.image_input import image_to_spectrogram, spectrogram_to_image
from audio_interpretability.models.vit import VIT_CONFIGS, ViT

__all__ = [
    "FOCALNET_CONFIGS",
    "VIT_CONFIGS",
    "AudioClassifier",
    "CNN14Decoder",
    "Cnn14",
    "FocalNet",
    "ViT",
    "image_to_spectrogram",
    "spectrogram_to_image",
    "Backbone",
    "BackboneOutput",
    "ClassifierOutput",
    "CosineHead",
    "LinearHead",
]
