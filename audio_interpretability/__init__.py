"""Listenable interpretations of audio classifiers (AMT and L-MAC) on ESC-50-style data.

The Python API (:mod:`audio_interpretability.api`, imported on first use so that
``import audio_interpretability`` stays light)::

    from audio_interpretability import load_interpreter
    result = load_interpreter("results/LMAC_cnn14/1234").interpret_file("clip.wav")
"""

__version__ = "0.1.0"

#: Names of :mod:`audio_interpretability.api` importable from the package itself.
_API = ("InterpretationResult", "Interpreter", "load_interpreter")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """Import the API on first use (PEP 562): torch and SpeechBrain load only then."""
    if name in _API:
        from audio_interpretability import api

        return getattr(api, name)
    raise AttributeError(f"module 'audio_interpretability' has no attribute {name!r}")
