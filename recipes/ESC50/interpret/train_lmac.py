#!/usr/bin/env python3
"""Train L-MAC (a mask decoder on a frozen CNN14) on ESC-50, then evaluate it.

To run::

    python recipes/ESC50/interpret/train_lmac.py hparams/lmac_cnn14.yaml \
        --data_folder /path/to/ESC-50-master
    # with WHAM! noise in every clip (0 dB):
    python recipes/ESC50/interpret/train_lmac.py hparams/lmac_cnn14.yaml --data_folder D \
        --add_wham_noise True --wham_folder /path/to/wham_noise
    # fine-tuning with the cross-correlation gate and guidance loss (the published command:
    # in the pre-training run's folder, it writes to <output_folder>/finetuning and
    # <save_folder>/finetuning; or pass a new --output_folder):
    python recipes/ESC50/interpret/train_lmac.py hparams/lmac_cnn14.yaml --data_folder D \
        --add_wham_noise True --wham_folder W \
        --finetuning True --pretrained_interpreter <first run>/save/psi_model.ckpt --g_w 4
    # evaluate a trained decoder only:
    ... --test_only True --pretrained_interpreter P

Every hyperparameter can be overridden on the command line and SpeechBrain's run options work
(``--device``, ``--precision``, ``--debug``, ``torchrun``). An interrupted run resumes from
its last checkpoint in ``<save_folder>``. The best decoder (``ckpt_key`` / ``ckpt_mode``) is
exported to ``<save_folder>/psi_model.ckpt`` and evaluated on ``test_fold_nums``:

* ``<output_folder>/test_metrics.json``: the main setting (with WHAM! noise from split
  ``wham_test_split``, default: ``wham_split`` as published, when ``add_wham_noise``, else the
  clean clips);
* ``<output_folder>/clean/test_metrics.json``: the clean clips (only with ``add_wham_noise``).

Authors
* audio_interpretability contributors
"""

from audio_interpretability.brains.lmac import LMAC
from audio_interpretability.brains.trainable import train_and_test
from audio_interpretability.recipe_utils import load_recipe

__all__ = ["LMAC", "main"]


def main(argv=None) -> dict:
    """Run the recipe; ``argv`` defaults to ``sys.argv[1:]``.

    Returns
    -------
    dict
        ``{setting: metrics}`` for the evaluated settings ("main", and "clean" with noise).
    """
    hparams, run_opts = load_recipe(argv)
    return train_and_test(LMAC, hparams, run_opts)


if __name__ == "__main__":
    main()
