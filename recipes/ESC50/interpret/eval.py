#!/usr/bin/env python3
"""Evaluate a trained L-MAC decoder in-domain and out-of-domain, or interpret one file.

To run::

    # in-domain: the test fold clean, and mixed with WHAM! noise when --wham_folder is given
    python recipes/ESC50/interpret/eval.py hparams/lmac_cnn14.yaml --data_folder D \
        --pretrained_interpreter results/LMAC_cnn14/1234/save/psi_model.ckpt \
        --output_folder results/LMAC_cnn14_eval [--wham_folder W]
    # plus an out-of-domain setting (all = the three of them):
    ... --overlap_type mixtures|white_noise|speech|all [--speech_folder LJSpeech-1.1/wavs]
    # one file (any sample rate / channels): interpretation WAV + PNG, predicted class
    ... --single_sample clip.wav --single_sample_output out/clip_interpretation.wav

Settings and outputs (``<output_folder>/<setting>/test_metrics.json`` each, interpretations
saved under ``<setting>/interpretations`` when ``save_interpretations``):

* ``clean``: the test fold as it is;
* ``wham``: the test fold mixed with WHAM! noise (``wham_test_split``, ``wham_snr_db``);
* ``mixtures`` / ``white_noise`` / ``speech``: the test fold overlapped with another test clip,
  white noise, or speech (see :mod:`audio_interpretability.data.ood`).

``<output_folder>/eval_metrics.json`` gathers every setting's metrics. The classifier and the
decoder are built from the YAML (same overrides as for training) and loaded from
``embedding_model_path`` / ``classifier_model_path`` and ``pretrained_interpreter``.

Authors
* audio_interpretability contributors
"""

import json
import os

from audio_interpretability.brains.lmac import (
    LMAC,
    evaluate_setting,
    interpret_single_sample,
)
from audio_interpretability.data.ood import OVERLAP_TYPES, OverlapDataset, check_overlap_type
from audio_interpretability.recipe_utils import load_recipe, prepare_datasets

__all__ = ["LMAC", "main"]


def ood_settings(overlap_type: str) -> list[str]:
    """The out-of-domain settings asked for by ``overlap_type`` (none, one type, or all)."""
    if overlap_type in (None, "none", "None"):
        return []
    if overlap_type == "all":
        return list(OVERLAP_TYPES)
    return [check_overlap_type(overlap_type)]


def _label_encoder(hparams: dict):
    """The classifier's label encoder (next to its checkpoint), else the recipe's, else None."""
    from speechbrain.dataio.encoder import CategoricalEncoder

    for path in (
        os.path.join(os.path.dirname(str(hparams["classifier_model_path"])), "label_encoder.txt"),
        hparams["label_encoder_file"],
    ):
        if os.path.isfile(path):
            encoder = CategoricalEncoder()
            encoder.load(path)
            return encoder
    return None


def main(argv=None) -> dict:
    """Run the evaluation; ``argv`` defaults to ``sys.argv[1:]``.

    Returns
    -------
    dict
        ``{setting: metrics}``, or for ``--single_sample`` the
        :class:`~audio_interpretability.brains.lmac.SingleSampleResult` as a dict.
    """
    hparams, run_opts = load_recipe(argv)
    if not hparams["pretrained_interpreter"]:
        raise ValueError(
            "eval.py needs --pretrained_interpreter <save_folder>/psi_model.ckpt (written by "
            "train_lmac.py)"
        )
    settings = ood_settings(hparams["overlap_type"])  # fail early on a bad overlap_type

    if hparams["single_sample"]:
        brain = LMAC(
            modules=hparams["modules"],
            hparams=hparams,
            run_opts=run_opts,
            label_encoder=_label_encoder(hparams),
        )
        result = interpret_single_sample(
            brain, hparams["single_sample"], hparams["single_sample_output"]
        )
        print(
            f"{hparams['single_sample']}: predicted class {result.predicted_class} "
            f"(index {result.predicted_index}, p = {result.probability:.3f}); wrote "
            f"{result.wav_path} and {result.png_path}"
        )
        return result._asdict()

    datasets = prepare_datasets(hparams)
    brain = LMAC(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        label_encoder=datasets["label_encoder"],
    )
    test_set = datasets["test"]
    runs = [("clean", test_set, False)]
    if hparams["wham_folder"]:
        runs.append(("wham", test_set, True))
    for overlap_type in settings:
        ood_set = OverlapDataset(
            test_set,
            overlap_type,
            sample_rate=hparams["sample_rate"],
            seed=hparams["seed"],
            speech_folder=hparams["speech_folder"],
        )
        runs.append((overlap_type, ood_set, False))

    results = {}
    for name, dataset, noisy in runs:
        results[name] = evaluate_setting(
            brain,
            dataset,
            os.path.join(hparams["output_folder"], name),
            hparams["test_dataloader_options"],
            add_wham_noise=noisy,
            wham_split=hparams["wham_test_split"],
        )
    path = os.path.join(hparams["output_folder"], "eval_metrics.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return results


if __name__ == "__main__":
    main()
