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

#: Environment variable: glibc's mmap threshold this package sets, in bytes (0: leave glibc's).
MMAP_THRESHOLD_ENV = "AUDIO_INTERPRETABILITY_MMAP_THRESHOLD"
MMAP_THRESHOLD_DEFAULT = 1 << 30


def keep_freed_memory() -> int:
    """Let glibc's malloc keep freed tensors of up to 1 GiB for reuse (``mallopt``
    ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``), instead of returning each one to the
    system and faulting fresh pages in for the next: on a 2-core VM the L-MAC training step
    is about 20 % faster (batch 2: 7.15-7.37 s -> 5.76-5.79 s; the published step
    re-implemented, given the same setting: 12.4 s -> 11.1 s), at 0.2-0.4 GiB more peak RSS
    at batch 2 and 1.6 GiB at batch 16 (docs/LMAC.md "Speed on the CPU"). Called when the
    package is imported. ``AUDIO_INTERPRETABILITY_MMAP_THRESHOLD``
    sets the threshold in bytes, 0 leaves glibc's default (memory freed at once, the smaller
    peak); glibc's own ``MALLOC_MMAP_THRESHOLD_`` in the environment wins; other C libraries
    are left alone.

    Returns
    -------
    int
        The threshold set, in bytes, or 0 when none was.
    """
    raw = os.environ.get(MMAP_THRESHOLD_ENV, str(MMAP_THRESHOLD_DEFAULT)).strip()
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value < 2**31:
        raise ValueError(
            f"{MMAP_THRESHOLD_ENV}={raw!r}: give a number of bytes from 0 (glibc's default: "
            f"freed memory goes back to the system at once) to {2**31 - 1}, e.g. "
            f"{MMAP_THRESHOLD_DEFAULT} (the default)"
        )
    if value == 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return 0
    import platform

    if platform.libc_ver()[0] != "glibc":
        return 0
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    libc = ctypes.CDLL(None)
    # freed memory at the top of the heap also stays, up to the same amount
    if libc.mallopt(m_mmap_threshold, ctypes.c_int(value)) != 1:
        return 0
    libc.mallopt(m_trim_threshold, ctypes.c_int(value))
    return value


#: The mmap threshold set when the package was imported (bytes; 0: none, glibc's default).
MMAP_THRESHOLD_SET = keep_freed_memory()

#: Names of :mod:`audio_interpretability.api` importable from the package itself.
_API = ("InterpretationResult", "Interpreter", "load_interpreter")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """Import the API on first use (PEP 562): torch and SpeechBrain load only then."""
    if name in _API:
        from audio_interpretability import api

        return getattr(api, name)
    raise AttributeError(f"module 'audio_interpretability' has no attribute {name!r}")
