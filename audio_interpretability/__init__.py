"""Listenable interpretations of audio classifiers (AMT and L-MAC) on ESC-50-style data.

The Python API (:mod:`audio_interpretability.api`, imported on first use so that
``import audio_interpretability`` stays light)::

    from audio_interpretability import load_interpreter
    result = load_interpreter("results/LMAC_cnn14/1234").interpret_file("clip.wav")
"""

import os

__version__ = "0.1.0"

# Large tensors on transparent huge pages (PyTorch reads this once, when torch loads, so it
# only takes effect when this package is imported first, as every recipe does): a fresh
# activation or gradient then costs 1 page fault per 2 MB instead of 512, and the L-MAC
# training step is 10-15 % faster on the CPU (docs/LMAC.md "Speed"). THP_MEM_ALLOC_ENABLE=0
# in the environment turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

#: Names of :mod:`audio_interpretability.api` importable from the package itself.
_API = ("InterpretationResult", "Interpreter", "load_interpreter")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """Import the API on first use (PEP 562): torch and SpeechBrain load only then."""
    if name in _API:
        from audio_interpretability import api

        return getattr(api, name)
    raise AttributeError(f"module 'audio_interpretability' has no attribute {name!r}")
