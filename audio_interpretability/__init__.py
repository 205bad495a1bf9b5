"""Listenable interpretations of audio classifiers (AMT and L-MAC) on ESC-50-style data."""

__version__ = "0.1.0"
