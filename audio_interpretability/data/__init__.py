"""Data layer: ESC-50 manifests and pipelines, WHAM! noise, synthetic ESC-50 with ground truth."""

from audio_interpretability.data.esc50 import (
    AudioCache,
    check_folds,
    dataio_prep,
    load_audio,
    peak_normalize,
    peak_scale,
    prepare_esc50,
)
from audio_interpretability.data.synthetic import (
    class_params,
    generate_synthetic_esc50,
    generate_wham_noise,
    ground_truth_mask,
    synthesize_clip,
)
from audio_interpretability.data.wham import (
    WhamNoise,
    check_wham_args,
    mix_at_snr,
    resolve_wham_folder,
)

__all__ = [
    "AudioCache",
    "WhamNoise",
    "check_folds",
    "check_wham_args",
    "class_params",
    "dataio_prep",
    "generate_synthetic_esc50",
    "generate_wham_noise",
    "ground_truth_mask",
    "load_audio",
    "mix_at_snr",
    "peak_normalize",
    "peak_scale",
    "prepare_esc50",
    "resolve_wham_folder",
    "synthesize_clip",
]
