#!/usr/bin/env python3
"""Train an ESC-50 sound classifier (CNN14, FocalNet or ViT) to be explained later.

To run::

    python recipes/ESC50/classification/train.py hparams/classifier_cnn14.yaml \
        --data_folder /path/to/ESC-50-master
    python recipes/ESC50/classification/train.py hparams/classifier_focalnet.yaml --data_folder D
    python recipes/ESC50/classification/train.py hparams/classifier_vit.yaml --data_folder D

Every hyperparameter can be overridden (``--number_of_epochs 30 --batch_size 16
--add_wham_noise True --wham_folder /path/to/wham_noise``), and SpeechBrain's run options work
(``--device cuda:0``, ``--precision bf16``, ``--debug``, ``torchrun --nproc_per_node=2``).
An interrupted run resumes from its last checkpoint in ``<output_folder>/save``.

At the end the best checkpoint (lowest validation error) is tested on ``test_fold_nums``
(``<output_folder>/test_metrics.json`` and ``confusion_matrix.png``) and exported to
``pretrained_folder`` (``embedding_model.ckpt``, ``classifier.ckpt``, ``label_encoder.txt``,
``classifier_hparams.yaml``), where the interpretation recipes look for it.

Authors
* audio_interpretability contributors
"""

import os

# isort: off
import audio_interpretability  # noqa: F401 (first: it sets THP_MEM_ALLOC_ENABLE before torch loads)

# isort: on
import speechbrain as sb

from audio_interpretability.brains.classifier import ClassifierBrain
from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.recipe_utils import load_recipe, prepare_datasets

__all__ = ["ClassifierBrain", "main"]


def main(argv=None) -> dict:
    """Run the recipe; ``argv`` defaults to ``sys.argv[1:]``. Returns the test metrics file path
    and the exported files, for callers such as tests."""
    hparams, run_opts = load_recipe(argv)
    datasets = prepare_datasets(hparams)
    label_encoder = datasets["label_encoder"]
    if len(label_encoder) != hparams["out_n_neurons"]:
        raise ValueError(
            f"The data has {len(label_encoder)} classes (label encoder "
            f"{hparams['label_encoder_file']}) but out_n_neurons={hparams['out_n_neurons']}; "
            f"pass --out_n_neurons {len(label_encoder)}"
        )
    class_names = [label_encoder.ind2lab[i] for i in range(len(label_encoder))]

    brain = ClassifierBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        class_names=class_names,
    )
    brain.fit(
        epoch_counter=hparams["epoch_counter"],
        train_set=datasets["train"],
        valid_set=datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_options"],
        valid_loader_kwargs=hparams["valid_dataloader_options"],
    )
    # Loads the checkpoint with the lowest validation error, then tests it.
    brain.evaluate(
        test_set=datasets["test"],
        min_key="error",
        test_loader_kwargs=dict(hparams["test_dataloader_options"]),
    )
    exported = sb.utils.distributed.run_on_main(
        export_classifier,
        kwargs={
            "embedding_model": hparams["embedding_model"],
            "classifier": hparams["classifier"],
            "pretrained_folder": hparams["pretrained_folder"],
            "label_encoder_file": hparams["label_encoder_file"],
            "hparams_file": os.path.join(hparams["output_folder"], "hyperparams.yaml"),
        },
    )
    return {"test_metrics": hparams["test_metrics_file"], "exported": exported}


if __name__ == "__main__":
    main()
