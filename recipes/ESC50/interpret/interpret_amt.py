#!/usr/bin/env python3
"""Explain an ESC-50 FocalNet or ViT with AMT (activation-map thresholding).

To run::

    python recipes/ESC50/interpret/interpret_amt.py hparams/amt_focalnet.yaml \
        --data_folder /path/to/ESC-50-master
    python recipes/ESC50/interpret/interpret_amt.py hparams/amt_vit.yaml --data_folder D

Every hyperparameter can be overridden (``--quantile 0.8 --overlap_test_type concat
--saliency_options "{stages: [-2, -1], aggregation: prod}" --batch_size 8``), and
SpeechBrain's run options work (``--device cuda:0``, ``--eval_precision bf16``, ``--debug``).

The classifier (``embedding_model_path`` / ``classifier_model_path``, exported by
``recipes/ESC50/classification/train.py``) is frozen; nothing is trained. The test folds are
interpreted batch-wise and ``<output_folder>/test_metrics.json`` gets the faithfulness metrics
(and, on the synthetic data set, the ground-truth localisation scores next to those of a random
mask of the same sparsity); the first ``n_saved_interpretations`` clips are saved as WAVs and a
PNG under ``<output_folder>/interpretations``. With ``overlap_test`` the same is done on
mixtures of two clips of different classes (``overlap_metrics.json``, ``overlap/``).

Authors
* audio_interpretability contributors
"""

import os

from audio_interpretability.brains.amt import InterpreterESC50Brain
from audio_interpretability.brains.evaluation import evaluate_overlap
from audio_interpretability.recipe_utils import load_recipe, prepare_datasets

__all__ = ["InterpreterESC50Brain", "main"]


def main(argv=None) -> InterpreterESC50Brain:
    """Run the recipe; ``argv`` defaults to ``sys.argv[1:]``. Returns the Brain (for tests)."""
    hparams, run_opts = load_recipe(argv)
    # Class names and indices of the classifier when it exported them, else from the data.
    label_encoder_file = hparams["pretrained_label_encoder"]
    if not (label_encoder_file and os.path.isfile(label_encoder_file)):
        label_encoder_file = hparams["label_encoder_file"]
    datasets = prepare_datasets(hparams, ("test",), label_encoder_file)

    brain = InterpreterESC50Brain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],  # as published; nothing is trained
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        label_encoder=datasets["label_encoder"],
    )
    loader_kwargs = dict(hparams["dataloader_options"])
    brain.evaluate(datasets["test"], test_loader_kwargs=dict(loader_kwargs))
    if hparams["overlap_test"]:
        evaluate_overlap(
            brain,
            datasets["test"],
            loader_kwargs,
            hparams["overlap_test_type"],
            hparams["overlap_mix_weights"],
        )
    return brain


if __name__ == "__main__":
    main()
