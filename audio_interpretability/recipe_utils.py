"""Start-up shared by the recipe scripts: command line, hparams, experiment folder, data.

Every recipe (classification, AMT, L-MAC training and evaluation) starts the same way; these
two functions are that start, so the scripts stay thin.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from audio_interpretability.data.esc50 import dataio_prep, prepare_esc50
from audio_interpretability.data.wham import check_wham_args


def load_recipe(argv=None, create_experiment: bool = True) -> tuple[dict, dict]:
    """Parse ``hparams.yaml --key value ...`` and SpeechBrain run options, load the hparams.

    Also initialises DDP when asked (``torchrun``), sets the CPU thread count
    (``num_threads``, 0 = torch's default), fails early when WHAM! noise is asked for without a
    usable ``wham_folder``, and creates the experiment folder (``output_folder``: a copy of the
    hparams with the overrides, logs).

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).
    create_experiment : bool
        Create ``output_folder`` with the hparams copy and logs.

    Returns
    -------
    hparams : dict
        The loaded hyperparameters.
    run_opts : dict
        SpeechBrain run options (device, precision, ...).
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(
        sys.argv[1:] if argv is None else list(argv)
    )
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if hparams["num_threads"]:
        torch.set_num_threads(hparams["num_threads"])
    check_wham_args(hparams["add_wham_noise"], hparams["wham_folder"])
    if create_experiment:
        sb.create_experiment_directory(
            experiment_directory=hparams["output_folder"],
            hyperparams_to_save=hparams_file,
            overrides=overrides,
        )
    return hparams, run_opts


def prepare_datasets(
    hparams: dict, splits=("train", "valid", "test"), label_encoder_file: str | None = None
) -> dict:
    """ESC-50 manifests (main process, idempotent) and the datasets of ``splits``.

    Reads ``data_folder``, ``{train,valid,test}_annotation``, ``{train,valid,test}_fold_nums``,
    ``sample_rate``, ``label_encoder_file`` (unless ``label_encoder_file`` is given) and
    ``cache_folder``.

    Returns
    -------
    dict
        ``{split: DynamicItemDataset, ..., "label_encoder": CategoricalEncoder}``.
    """
    sb.utils.distributed.run_on_main(
        prepare_esc50,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_json_train": hparams["train_annotation"],
            "save_json_valid": hparams["valid_annotation"],
            "save_json_test": hparams["test_annotation"],
            "train_fold_nums": hparams["train_fold_nums"],
            "valid_fold_nums": hparams["valid_fold_nums"],
            "test_fold_nums": hparams["test_fold_nums"],
        },
    )
    return dataio_prep(
        annotations={split: hparams[f"{split}_annotation"] for split in splits},
        sample_rate=hparams["sample_rate"],
        label_encoder_file=label_encoder_file or hparams["label_encoder_file"],
        cache_folder=hparams["cache_folder"],
    )
