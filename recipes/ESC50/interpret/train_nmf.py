#!/usr/bin/env python3
"""Learn the non-negative dictionary of L2I (amortised NMF) on ESC-50, then test it.

To run::

    python recipes/ESC50/interpret/train_nmf.py hparams/nmf.yaml \
        --data_folder /path/to/ESC-50-master
    # the published README's command (PNGs and the decoder every 30 epochs):
    python recipes/ESC50/interpret/train_nmf.py hparams/nmf.yaml --data_folder D --save_period 30

Every hyperparameter can be overridden on the command line and SpeechBrain's run options work
(``--device``, ``--precision``, ``--debug``, ``torchrun``). An interrupted run resumes from its
last checkpoint in ``<save_folder>``. Outputs:

* ``<save_folder>/nmf_decoder.ckpt``: the decoder of lowest validation loss (published layout
  ``{"W": (513, K)}``; the L2I YAMLs' ``nmf_decoder_path``), also every ``save_period`` epochs;
* ``<output_folder>/test_metrics.json``: reconstruction errors on ``test_fold_nums``;
* ``<output_folder>/nmf_test.png`` (and ``nmf_rec/epoch_<n>.png``): atoms and a reconstruction.

See docs/NMF.md.

Authors
* audio_interpretability contributors
"""

from audio_interpretability.brains.nmf import NMFBrain
from audio_interpretability.recipe_utils import load_recipe, prepare_datasets

__all__ = ["NMFBrain", "main"]


def main(argv=None) -> dict:
    """Run the recipe; ``argv`` defaults to ``sys.argv[1:]``.

    Returns
    -------
    dict
        The test statistics (also in ``<output_folder>/test_metrics.json``).
    """
    hparams, run_opts = load_recipe(argv)
    datasets = prepare_datasets(hparams)
    brain = NMFBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["dataloader_options"],
        valid_loader_kwargs=hparams["test_dataloader_options"],
    )
    brain.evaluate(
        datasets["test"], min_key="loss", test_loader_kwargs=hparams["test_dataloader_options"]
    )  # the checkpoint of lowest validation loss
    brain.export()
    return brain.test_stats


if __name__ == "__main__":
    main()
