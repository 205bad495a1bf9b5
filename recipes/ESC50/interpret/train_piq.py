#!/usr/bin/env python3
"""Train PIQ (a vector-quantised decoder on a frozen classifier) on ESC-50, then evaluate it.

To run::

    python recipes/ESC50/interpret/train_piq.py hparams/piq.yaml \
        --data_folder /path/to/ESC-50-master
    # on a FocalNet / ViT classifier (recipes/ESC50/classification, classifier_focalnet.yaml):
    python recipes/ESC50/interpret/train_piq.py hparams/piq_focalnet.yaml --data_folder D
    python recipes/ESC50/interpret/train_piq.py hparams/piq_vit.yaml --data_folder D
    # with WHAM! noise in every clip (0 dB):
    ... --add_wham_noise True --wham_folder /path/to/wham_noise
    # evaluate a trained psi only:
    ... --test_only True --pretrained_interpreter <save_folder>/psi_model.ckpt

Every hyperparameter can be overridden on the command line and SpeechBrain's run options work
(``--device``, ``--precision``, ``--debug``, ``torchrun``). An interrupted run resumes from
its last checkpoint in ``<save_folder>``. The best psi (``ckpt_key`` / ``ckpt_mode``) is
exported to ``<save_folder>/psi_model.ckpt`` and evaluated on ``test_fold_nums``:

* ``<output_folder>/test_metrics.json``: the main setting (with WHAM! noise from split
  ``wham_test_split`` when ``add_wham_noise``, else the clean clips);
* ``<output_folder>/clean/test_metrics.json``: the clean clips (only with ``add_wham_noise``).

Authors
* audio_interpretability contributors
"""

from audio_interpretability.brains.piq import PIQ
from audio_interpretability.brains.trainable import train_and_test
from audio_interpretability.recipe_utils import load_recipe

__all__ = ["PIQ", "main"]


def main(argv=None) -> dict:
    """Run the recipe; ``argv`` defaults to ``sys.argv[1:]``.

    Returns
    -------
    dict
        ``{setting: metrics}`` for the evaluated settings ("main", and "clean" with noise).
    """
    hparams, run_opts = load_recipe(argv)
    return train_and_test(PIQ, hparams, run_opts)


if __name__ == "__main__":
    main()
