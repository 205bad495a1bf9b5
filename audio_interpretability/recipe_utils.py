"""Start-up shared by the recipe scripts: command line, hparams, experiment folder, data.

Every recipe (classification, AMT, L-MAC training and evaluation) starts the same way; these
two functions are that start, so the scripts stay thin.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
import tempfile

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.train_logger import TrainLogger

from audio_interpretability.data.esc50 import dataio_prep, prepare_esc50
from audio_interpretability.data.wham import (
    WHAM_SPLITS,
    check_wham_args,
    resolve_wham_folder,
    wham_noise_in_workers,
)
from audio_interpretability.distributed import (
    choose_distributed_backend,
    destroy_process_group_at_exit,
)

logger = logging.getLogger(__name__)

#: Published keys whose other values select code the published recipes never ran to the end
#: (their False branch leaves a variable undefined, or selects a method not implemented here):
#: ``{key: (the one value accepted, why the other is refused)}``. A YAML whose model needs the
#: other value says so in its own default (``l2i_conv2d.yaml``: ``use_melspectra_log1p:
#: False``, its classifier reads X): the accepted value is then the YAML's default.
FIXED_PUBLISHED_KEYS = {
    "use_mask_output": (
        True,
        "the mask is the interpreter's output (L-MAC: sigmoid of the decoder, AMT: the "
        "quantile-thresholded saliency); the published False branch is broken (L-MAC leaves "
        "X_int undefined, AMT thresholds softplus(+-inf) at mask_th * inf and keeps no bin)",
    ),
    "use_melspectra_log1p": (
        True,
        "the CNN14 reads log1p(fbank(|STFT|)); the published False branch feeds None to it",
    ),
    "use_stft2mel": (
        True,
        "the masked spectrograms go to the CNN14 through log1p(fbank(expm1(.))); the published "
        "False branch leaves the masked mel spectrograms undefined",
    ),
    "return_reps": (
        True,
        "L-MAC's decoder reads the CNN14's block outputs",
    ),
}


def load_recipe(argv=None, create_experiment: bool = True) -> tuple[dict, dict]:
    """Parse ``hparams.yaml --key value ...`` and SpeechBrain run options, load the hparams.

    Also initialises DDP when asked (``torchrun``), sets the CPU thread count
    (``num_threads``, 0 = torch's default), fails early when WHAM! noise is asked for without a
    usable ``wham_folder`` or with a ``wham_noise_in_workers`` other than True / False, and
    creates the experiment folder (``output_folder``: a copy of the hparams with the overrides,
    logs). ``--device cuda`` without a GPU and an output folder
    that cannot be written fail here, with the fix.

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
        normalize_flags(sys.argv[1:] if argv is None else list(argv))
    )
    device = str(run_opts.get("device") or "")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device} was given but torch sees no GPU on this machine; pass --device cpu"
        )
    run_opts = choose_distributed_backend(run_opts)  # torchrun on the CPU: gloo
    sb.utils.distributed.ddp_init_group(run_opts)
    destroy_process_group_at_exit()  # no SIGABRT at exit under torchrun (gloo)
    unwritable = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)
    fix = "pass an --output_folder you can write to (checkpoints, logs and results go there)"
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            text = fin.read()
        hparams = load_hyperpyyaml(text, overrides)
    except OSError as err:  # building the YAML creates folders (the checkpointer's save_folder)
        if err.errno not in unwritable or not err.filename:
            raise
        raise PermissionError(f"cannot write to {err.filename} ({err.strerror}); {fix}") from err
    if create_experiment:  # a folder that cannot be written fails now, not after training
        try:
            os.makedirs(hparams["output_folder"], exist_ok=True)
            with tempfile.TemporaryFile(dir=hparams["output_folder"]):
                pass
        except OSError as err:
            raise PermissionError(
                f"cannot write to {hparams['output_folder']} ({err.strerror or err}); {fix}"
            ) from err
    if run_opts.get("test_only") and "test_only" in hparams:
        hparams["test_only"] = True  # SpeechBrain's run option and the YAML key are one switch
    if hparams["num_threads"]:
        torch.set_num_threads(hparams["num_threads"])
    check_wham_args(hparams["add_wham_noise"], hparams["wham_folder"])
    wham_noise_in_workers(hparams)  # True / False, checked before any work
    check_published_keys(hparams, yaml_fixed_defaults(text))
    if create_experiment:
        sb.create_experiment_directory(
            experiment_directory=hparams["output_folder"],
            hyperparams_to_save=hparams_file,
            overrides=overrides,
        )
        if hparams.get("use_tensorboard"):
            hparams["train_logger"] = MultiTrainLogger(
                hparams["train_logger"],
                sb.utils.train_logger.TensorboardLogger(hparams["tensorboard_logs_folder"]),
            )
    return hparams, run_opts


#: SpeechBrain run options that are flags (``action="store_true"``) while the published command
#: lines (and users) write them with a value: ``--test_only True``.
BOOLEAN_RUN_FLAGS = ("--test_only",)


def normalize_flags(argv: list[str]) -> list[str]:
    """``--test_only True`` -> ``--test_only``, ``--test_only False`` -> nothing (also
    ``--test_only=True``).

    SpeechBrain 1.1.2 parses ``--test_only`` as a flag, so the ``True`` after it would be glued
    to the previous override's value (``--save_interpretations False --test_only True`` would
    set ``save_interpretations`` to the string ``"False True"``).

    Example
    -------
    >>> normalize_flags(["h.yaml", "--lr", "1", "--test_only", "True", "--seed", "2"])
    ['h.yaml', '--lr', '1', '--test_only', '--seed', '2']
    >>> normalize_flags(["h.yaml", "--test_only=False"])
    ['h.yaml']
    """
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        flag, _, value = arg.partition("=")
        if flag in BOOLEAN_RUN_FLAGS:
            if (
                not value
                and i + 1 < len(argv)
                and argv[i + 1] in ("True", "False", "true", "false")
            ):
                value, i = argv[i + 1], i + 1
            if value.lower() not in ("", "true", "false"):
                raise ValueError(f"{flag} takes True or False, got {value!r}")
            if value.lower() != "false":
                out.append(flag)
        else:
            out.append(arg)
        i += 1
    return out


class MultiTrainLogger(TrainLogger):
    """Forward ``log_stats`` to several loggers (``use_tensorboard``: file + TensorBoard).

    TensorBoard only takes numbers: non-numeric meta values (e.g. a folder name) go to the
    other loggers only.

    Arguments
    ---------
    *loggers : speechbrain.utils.train_logger.TrainLogger
        The loggers, e.g. a ``FileTrainLogger`` and a ``TensorboardLogger``.
    """

    def __init__(self, *loggers: TrainLogger):
        self.loggers = loggers

    def log_stats(
        self, stats_meta, train_stats=None, valid_stats=None, test_stats=None, verbose=False
    ):
        """Log the stats with every logger (see ``TrainLogger.log_stats``)."""
        for train_logger in self.loggers:
            meta = stats_meta
            if isinstance(train_logger, sb.utils.train_logger.TensorboardLogger):
                meta = {k: v for k, v in stats_meta.items() if isinstance(v, (int, float))}
            train_logger.log_stats(meta, train_stats, valid_stats, test_stats, verbose)


def _looks_like_hub_id(path) -> bool:
    """``owner/repo/file`` that is not a local file: a model-hub path of the published YAMLs."""
    path = str(path)
    parts = path.split("/")
    return (
        len(parts) == 3
        and not os.path.isabs(path)
        and not path.startswith(".")
        and not os.path.exists(path)
        and not os.path.isdir(parts[0])
    )


def yaml_fixed_defaults(text: str) -> dict:
    r"""The YAML's own defaults of the :data:`FIXED_PUBLISHED_KEYS` (``True`` / ``False``).

    Example
    -------
    >>> yaml_fixed_defaults("lr: 1\nuse_melspectra_log1p: False  # X")
    {'use_melspectra_log1p': False}
    """
    found = {}
    for key in FIXED_PUBLISHED_KEYS:
        match = re.search(rf"^{key}:\s*(True|False)\b", text, flags=re.MULTILINE)
        if match:
            found[key] = match.group(1) == "True"
    return found


def check_published_keys(hparams: dict, yaml_defaults: dict | None = None) -> None:
    """Validate the keys kept from SpeechBrain's published ESC-50 YAMLs (when present).

    * :data:`FIXED_PUBLISHED_KEYS`: only the value that works is accepted;
    * ``mask_th`` in [0, 1] (AMT; it only acts with ``use_mask_output: False``, as published);
    * ``signal_length_s``, ``interpret_period``, ``ckpt_interval_minutes`` >= 0;
    * ``use_pretrained: False`` keeps the classifier's initial weights (as published:
      nothing is loaded), ``True`` loads ``embedding_model_path`` / ``classifier_model_path``,
      which must be local files (model-hub ids are not downloaded);
    * ``wham_audio_folder`` (the WHAM! split folder of the training noise, published
      ``<wham_folder>/tr``) sets ``wham_split`` when WHAM! noise is used.

    Raises
    ------
    ValueError
        A value this toolkit does not support, with what to pass instead.
    FileNotFoundError
        A model-hub id given as a checkpoint path.
    """
    for key, (accepted, why) in FIXED_PUBLISHED_KEYS.items():
        accepted = (yaml_defaults or {}).get(key, accepted)
        if key in hparams and hparams[key] != accepted:
            raise ValueError(
                f"{key}: {hparams[key]!r} is not supported: {why}. Pass --{key} {accepted} "
                "(the default) or leave it out."
            )
    if "mask_th" in hparams and not 0.0 <= float(hparams["mask_th"]) <= 1.0:
        raise ValueError(
            f"mask_th must be in [0, 1] (a fraction of the mask's maximum), got "
            f"{hparams['mask_th']}; pass e.g. --mask_th 0.35."
        )
    for key in ("signal_length_s", "interpret_period", "ckpt_interval_minutes"):
        if key in hparams and float(hparams[key]) < 0:
            raise ValueError(f"{key} must be >= 0, got {hparams[key]}; pass e.g. --{key} 0.")
    if "use_pretrained" in hparams:
        _check_use_pretrained(hparams)
    if hparams.get("wham_audio_folder") and hparams.get("add_wham_noise"):
        hparams["wham_split"] = wham_split_of(hparams["wham_audio_folder"], hparams["wham_folder"])


def _check_use_pretrained(hparams: dict) -> None:
    """``use_pretrained``: False drops the classifier paths; True needs local files."""
    keys = ("embedding_model_path", "classifier_model_path")
    if not hparams["use_pretrained"]:
        logger.warning(
            "use_pretrained is False: the classifier keeps its initial (random) weights, as in "
            "the published recipes; explanations of it are meaningless."
        )
        for key in keys:
            hparams[key] = None
        return
    for key in keys:
        if hparams.get(key) and _looks_like_hub_id(hparams[key]):
            raise FileNotFoundError(
                f"{key} {hparams[key]!r} is a model-hub path and nothing is downloaded here; "
                f"pass --{key} <local .ckpt> (exported by recipes/ESC50/classification/train.py"
                ", e.g. results/pretrained/<model>/embedding_model.ckpt and classifier.ckpt)."
            )


def wham_test_split(hparams: dict) -> str:
    """The WHAM! split of the test noise: ``wham_test_split``, or ``wham_split`` when null.

    The published recipes draw the test noise from ``wham_audio_folder``, the training noise
    (``<wham_folder>/tr``), so ``null`` (the default of ``hparams/lmac_cnn14.yaml``) keeps that;
    ``tt`` tests on WHAM!'s recordings never seen in training (docs/DIFFERENCES.md, L7).

    Example
    -------
    >>> wham_test_split({"wham_split": "tr", "wham_test_split": None})
    'tr'
    >>> wham_test_split({"wham_split": "tr", "wham_test_split": "tt"})
    'tt'
    """
    return hparams.get("wham_test_split") or hparams["wham_split"]


def wham_split_of(wham_audio_folder: str, wham_folder: str) -> str:
    """The WHAM! split (``tr``, ``cv`` or ``tt``) that ``wham_audio_folder`` names.

    The published ``wham_audio_folder`` is ``<wham_folder>/tr``; here the noise is read from
    ``<wham_folder>/<wham_split>``, so the folder must be one of the splits of ``wham_folder``
    (or of its ``wham_noise`` subfolder).

    Example
    -------
    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "tr")); os.makedirs(os.path.join(root, "cv"))
    >>> wham_split_of(os.path.join(root, "cv"), root)
    'cv'
    """
    split = os.path.basename(os.path.normpath(str(wham_audio_folder)))
    parent = os.path.abspath(os.path.dirname(os.path.normpath(str(wham_audio_folder))))
    roots = {os.path.abspath(str(wham_folder)), os.path.abspath(resolve_wham_folder(wham_folder))}
    if split not in WHAM_SPLITS or parent not in roots:
        raise ValueError(
            f"wham_audio_folder {wham_audio_folder!r} is not a split ({', '.join(WHAM_SPLITS)}) "
            f"of wham_folder {wham_folder!r}; pass --wham_split tr|cv|tt instead (the noise is "
            "read from <wham_folder>/<wham_split>)."
        )
    return split


def prepare_datasets(
    hparams: dict, splits=("train", "valid", "test"), label_encoder_file: str | None = None
) -> dict:
    """ESC-50 manifests (main process, idempotent) and the datasets of ``splits``.

    Reads ``data_folder``, ``{train,valid,test}_annotation``, ``{train,valid,test}_fold_nums``,
    ``sample_rate``, ``label_encoder_file`` (unless ``label_encoder_file`` is given),
    ``cache_folder`` and, when present, the published ``audio_data_folder`` (where the clips
    are, default ``<data_folder>/audio``), ``skip_manifest_creation`` (use existing manifests),
    ``skip_bad_audio`` (leave unusable clips out of the manifests, see
    :func:`~audio_interpretability.data.esc50.prepare_esc50`; default False: stop at the first)
    and ``signal_length_s`` (checked against the clips' length when WHAM! noise is added).

    Returns
    -------
    dict
        ``{split: DynamicItemDataset, ..., "label_encoder": CategoricalEncoder}``.
    """
    if hparams.get("skip_manifest_creation"):
        logger.info("skip_manifest_creation: using the existing manifests")
    else:
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
                "audio_data_folder": hparams.get("audio_data_folder"),
                "skip_bad_audio": bool(hparams.get("skip_bad_audio", False)),
            },
        )
    if hparams.get("add_wham_noise") and hparams.get("signal_length_s"):
        _check_signal_length(hparams["train_annotation"], float(hparams["signal_length_s"]))
    return dataio_prep(
        annotations={split: hparams[f"{split}_annotation"] for split in splits},
        sample_rate=hparams["sample_rate"],
        label_encoder_file=label_encoder_file or hparams["label_encoder_file"],
        cache_folder=hparams["cache_folder"],
    )


def _check_signal_length(manifest: str, signal_length_s: float) -> None:
    """Warn when the clips are not ``signal_length_s`` long (the published WHAM! noise length).

    The published recipe cuts WHAM! noise to ``signal_length_s`` and asserts it is 5 (the
    ESC-50 clip length); here the noise is always cut to each batch's clip length.
    """
    if not os.path.isfile(manifest):
        return
    with open(manifest, encoding="utf-8") as f:
        durations = {round(float(e["duration"]), 3) for e in json.load(f).values()}
    if durations and durations != {round(signal_length_s, 3)}:
        logger.warning(
            "signal_length_s is %s s but the clips last %s s; the WHAM! noise is cut to the "
            "clips' length (pass --signal_length_s %s to silence this).",
            signal_length_s,
            sorted(durations),
            max(durations),
        )
