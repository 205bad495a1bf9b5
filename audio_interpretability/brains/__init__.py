"""SpeechBrain Brains: the classifier, the InterpreterBrain base, AMT and L-MAC."""

from audio_interpretability.brains.amt import InterpreterESC50Brain
from audio_interpretability.brains.classifier import ClassifierBrain
from audio_interpretability.brains.interpreter import (
    Interpretation,
    InterpreterBrain,
    MaskOutput,
)
from audio_interpretability.brains.lmac import LMAC

__all__ = [
    "LMAC",
    "ClassifierBrain",
    "Interpretation",
    "InterpreterBrain",
    "InterpreterESC50Brain",
    "MaskOutput",
]
