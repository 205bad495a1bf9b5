"""Install the audio_interpretability package (the recipes import it)."""

from setuptools import find_packages, setup

setup(
    name="audio_interpretability",
    version="0.1.0",
    description="Listenable interpretations of audio classifiers: AMT and L-MAC on ESC-50",
    packages=find_packages(include=["audio_interpretability", "audio_interpretability.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchaudio",
        "speechbrain>=1.1",
        "hyperpyyaml",
        "numpy",
        "soundfile",
        "tqdm",
        "matplotlib",
        "scipy",
        "captum",
    ],
)
