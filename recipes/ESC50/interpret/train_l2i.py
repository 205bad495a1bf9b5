#!/usr/bin/env python3
"""Train L2I (Listen to Interpret: NMF activations from a frozen classifier) on ESC-50, then
evaluate it.

To run::

    # 1. the NMF dictionary (once): <save_folder>/nmf_decoder.ckpt
    python recipes/ESC50/interpret/train_nmf.py hparams/nmf.yaml --data_folder D
    # 2. L2I on the CNN14 classifier (published: python train_l2i.py hparams/l2i_cnn14.yaml
    #    --data_folder /yourpath/ESC50)
    python recipes/ESC50/interpret/train_l2i.py hparams/l2i_cnn14.yaml --data_folder D \
        --nmf_decoder_path results/train_nmf/1234/save/nmf_decoder.ckpt
    # with WHAM! noise in every clip (0 dB):
    ... --add_wham_noise True --wham_folder /path/to/wham_noise
    # evaluate a trained L2I only (psi_model.ckpt, theta.ckpt next to it):
    ... --test_only True --pretrained_interpreter <save_folder>/psi_model.ckpt

Every hyperparameter can be overridden on the command line and SpeechBrain's run options work
(``--device``, ``--precision``, ``--debug``, ``torchrun``). An interrupted run resumes from
its last checkpoint in ``<save_folder>``. The best ``psi`` and ``theta`` (``ckpt_key`` /
``ckpt_mode``) are exported to ``<save_folder>/psi_model.ckpt`` and ``theta.ckpt`` and
evaluated on ``test_fold_nums``:

* ``<output_folder>/test_metrics.json``: the main setting (with WHAM! noise from split
  ``wham_test_split`` when ``add_wham_noise``, else the clean clips);
* ``<output_folder>/clean/test_metrics.json``: the clean clips (only with ``add_wham_noise``).

See docs/L2I.md.

Authors
* audio_interpretability contributors
"""

from audio_interpretability.brains.l2i import L2I
from audio_interpretability.brains.trainable import train_and_test
from audio_interpretability.recipe_utils import load_recipe

__all__ = ["L2I", "main"]


def main(argv=None) -> dict:
    """Run the recipe; ``argv`` defaults to ``sys.argv[1:]``.

    Returns
    -------
    dict
        ``{setting: metrics}`` for the evaluated settings ("main", and "clean" with noise).
    """
    hparams, run_opts = load_recipe(argv)
    return train_and_test(L2I, hparams, run_opts)


if __name__ == "__main__":
    main()
