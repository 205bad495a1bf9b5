"""SpeechBrain Brains: the classifier, the InterpreterBrain base, its trainable life cycle, the
interpreters (AMT, L-MAC, ...) and the registry ``eval.py`` picks them from (``int_method``)."""

import importlib

from audio_interpretability.brains.amt import InterpreterESC50Brain
from audio_interpretability.brains.classifier import ClassifierBrain
from audio_interpretability.brains.interpreter import (
    Interpretation,
    InterpreterBrain,
    MaskOutput,
)
from audio_interpretability.brains.lmac import LMAC
from audio_interpretability.brains.trainable import TrainableInterpreterBrain

#: ``int_method`` (the published key of eval.py) -> the interpreter's Brain class, and the
#: YAML that builds what it needs.
INTERPRETERS = {
    "amt": ("audio_interpretability.brains.amt:InterpreterESC50Brain", "amt_focalnet.yaml"),
    "lmac": ("audio_interpretability.brains.lmac:LMAC", "lmac_cnn14.yaml"),
    "l2i": ("audio_interpretability.brains.l2i:L2I", "l2i_cnn14.yaml"),
    "piq": ("audio_interpretability.brains.piq:PIQ", "piq.yaml"),
    # the gradient baselines (captum), one YAML: --int_method switches between them
    "saliency": ("audio_interpretability.brains.gradient:Saliency", "gradient_cnn14.yaml"),
    "smoothgrad": ("audio_interpretability.brains.gradient:SmoothGrad", "gradient_cnn14.yaml"),
    "integrated_gradients": (
        "audio_interpretability.brains.gradient:IntegratedGradients",
        "gradient_cnn14.yaml",
    ),
    "gradcam": ("audio_interpretability.brains.gradient:GradCAM", "gradient_cnn14.yaml"),
}


def interpreter_class(int_method: str) -> type:
    """The Brain class of ``int_method`` (``amt``, ``lmac``, ``l2i``, ``piq``, ``saliency``,
    ``smoothgrad``, ``integrated_gradients``, ``gradcam``).

    Example
    -------
    >>> interpreter_class("lmac").__name__
    'LMAC'
    """
    if int_method not in INTERPRETERS:
        raise ValueError(
            f"unknown int_method {int_method!r}; pass --int_method one of "
            f"{', '.join(INTERPRETERS)} (with that interpreter's YAML)"
        )
    module, name = INTERPRETERS[int_method][0].split(":")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "INTERPRETERS",
    "LMAC",
    "ClassifierBrain",
    "Interpretation",
    "InterpreterBrain",
    "InterpreterESC50Brain",
    "MaskOutput",
    "TrainableInterpreterBrain",
    "interpreter_class",
]
