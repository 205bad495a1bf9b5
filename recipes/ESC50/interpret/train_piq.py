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

import os

from audio_interpretability.brains.evaluation import evaluate_setting
from audio_interpretability.brains.piq import PIQ
from audio_interpretability.data.wham import WhamNoise
from audio_interpretability.recipe_utils import load_recipe, prepare_datasets, wham_test_split

__all__ = ["PIQ", "main"]


def main(argv=None) -> dict:
    """Run the recipe; ``argv`` defaults to ``sys.argv[1:]``.

    Returns
    -------
    dict
        ``{setting: metrics}`` for the evaluated settings ("main", and "clean" with noise).
    """
    hparams, run_opts = load_recipe(argv)
    datasets = prepare_datasets(hparams)

    test_only = hparams["test_only"]
    # The noise sources, built once (checked before any work): training / validation, test.
    noise = WhamNoise.from_hparams(hparams)
    test_noise = WhamNoise.from_hparams(hparams, split=wham_test_split(hparams))
    brain = PIQ(
        noise=noise,
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=None if test_only else hparams["checkpointer"],
        label_encoder=datasets["label_encoder"],
    )
    if not test_only:
        brain.fit(
            brain.hparams.epoch_counter,
            datasets["train"],
            datasets["valid"],
            train_loader_kwargs=hparams["dataloader_options"],
            valid_loader_kwargs=hparams["test_dataloader_options"],
        )

    # Test the best checkpoint (test_only: the pretrained_interpreter loaded at start-up).
    folder = str(brain.run_folder)
    settings = {"main": (folder, test_noise)}
    if test_noise is not None:
        settings["clean"] = (os.path.join(folder, "clean"), None)
    results = {}
    for name, (folder, setting_noise) in settings.items():
        results[name] = evaluate_setting(
            brain,
            datasets["test"],
            folder,
            hparams["test_dataloader_options"],
            noise=setting_noise,
            **brain.best_checkpoint_key(),
        )
    return results


if __name__ == "__main__":
    main()
