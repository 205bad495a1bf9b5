"""Export and load the trained classifiers that the interpretation recipes explain.

The classification recipe (``recipes/ESC50/classification/train.py``) ends by exporting the
best model to a stable folder (hparam ``pretrained_folder``, default
``results/pretrained/<cnn14|focalnet|vit>``)::

    embedding_model.ckpt     backbone state_dict (torch.save), as the published recipes
    classifier.ckpt          head state_dict
    label_encoder.txt        SpeechBrain CategoricalEncoder file (index == ESC-50 target)
    classifier_hparams.yaml  the resolved hyperparameters the model was trained with

The interpretation recipes' ``embedding_model_path`` / ``classifier_model_path`` point at the
two ``.ckpt`` files and call :func:`load_classifier`, which turns every way this can go wrong
(missing file, corrupt file, another architecture or size, another number of classes) into an
error that names the file and says how to fix it.

Checkpoints released with SpeechBrain's own ESC-50 recipes load the same way, strictly: each
module's ``convert_published_state_dict`` recognises the published layout by its keys and maps
it onto ours (CNN14: same keys; its ``torch.nn.Linear`` head; ``transformers``
``FocalNetBackbone`` / ``ViTModel`` backbones; the ECAPA ``Classifier`` head), then the usual
strict checks run. See docs/CLASSIFIERS.md, "Loading SpeechBrain's released checkpoints".

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import torch

from audio_interpretability.checkpointing import apply_umask

logger = logging.getLogger(__name__)

TRAIN_COMMAND = (
    "python recipes/ESC50/classification/train.py hparams/classifier_<model>.yaml --data_folder <D>"
)
EMBEDDING_FILE = "embedding_model.ckpt"
CLASSIFIER_FILE = "classifier.ckpt"
LABEL_ENCODER_FILE = "label_encoder.txt"
HPARAMS_FILE = "classifier_hparams.yaml"
_MAX_KEYS_SHOWN = 4


def _atomic_write(path: str, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` on a temporary file next to ``path``, then rename it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        apply_umask(tmp)  # mkstemp creates 0600; checkpoints are shared files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def export_classifier(
    embedding_model: torch.nn.Module,
    classifier: torch.nn.Module,
    pretrained_folder: str,
    label_encoder_file: str | None = None,
    hparams_file: str | None = None,
) -> dict[str, str]:
    """Write a trained classifier to ``pretrained_folder`` (atomic writes).

    Arguments
    ---------
    embedding_model : torch.nn.Module
        Backbone whose ``state_dict`` goes to ``embedding_model.ckpt``.
    classifier : torch.nn.Module
        Head whose ``state_dict`` goes to ``classifier.ckpt``.
    pretrained_folder : str
        Destination folder (created if needed; existing files are replaced).
    label_encoder_file : str, optional
        CategoricalEncoder file copied to ``label_encoder.txt``.
    hparams_file : str, optional
        Resolved hyperparameter file copied to ``classifier_hparams.yaml``.

    Returns
    -------
    dict
        Paths written, keyed by "embedding_model", "classifier" and, when given,
        "label_encoder", "hparams".

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> paths = export_classifier(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2), folder)
    >>> sorted(os.path.basename(p) for p in paths.values())
    ['classifier.ckpt', 'embedding_model.ckpt']
    """
    os.makedirs(pretrained_folder, exist_ok=True)
    paths = {
        "embedding_model": os.path.join(pretrained_folder, EMBEDDING_FILE),
        "classifier": os.path.join(pretrained_folder, CLASSIFIER_FILE),
    }
    for key, module in (("embedding_model", embedding_model), ("classifier", classifier)):
        state = {name: t.detach().cpu() for name, t in module.state_dict().items()}
        _atomic_write(paths[key], lambda tmp, state=state: torch.save(state, tmp))
    for key, source, name in (
        ("label_encoder", label_encoder_file, LABEL_ENCODER_FILE),
        ("hparams", hparams_file, HPARAMS_FILE),
    ):
        if source is None:
            continue
        if not os.path.isfile(source):
            raise FileNotFoundError(
                f"Cannot export {key}: {source} does not exist. Pass the file the training "
                "run wrote (label_encoder_file / <output_folder>/hyperparams.yaml)."
            )
        paths[key] = os.path.join(pretrained_folder, name)
        _atomic_write(paths[key], lambda tmp, source=source: shutil.copyfile(source, tmp))
    logger.info("Exported the classifier to %s", pretrained_folder)
    return paths


def _read_state_dict(path: str, what: str, hint: str) -> dict:
    """torch.load a state_dict with clear errors for a missing or corrupt file."""
    if not path:
        raise ValueError(
            f"No {what} checkpoint path was given (got {path!r}). Set "
            f"embedding_model_path and classifier_model_path to the files that `{hint}` "
            "exports."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The {what} checkpoint {path} does not exist. Train and export a classifier "
            f"with `{hint}` (it writes {EMBEDDING_FILE} and {CLASSIFIER_FILE} to its "
            "pretrained_folder), or point embedding_model_path / classifier_model_path at "
            "existing files."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and EOF errors all mean "not a checkpoint"
        raise ValueError(
            f"The {what} checkpoint {path} is corrupt or not a torch state_dict "
            f"({type(err).__name__}: {err}). Re-create it with `{hint}`."
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"The {what} checkpoint {path} holds a {type(state).__name__}, not a state_dict "
            f"of tensors. Re-create it with `{hint}`."
        )
    return state


def _few(keys) -> str:
    """Comma-separated first few keys, with a count of the rest."""
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    rest = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" (+{rest} more)" if rest > 0 else "")


def _hparams_advice(path: str, hint: str) -> str:
    """Which YAML to use: the exported copy next to the checkpoint, when there is one."""
    exported = os.path.join(os.path.dirname(os.path.abspath(path)), HPARAMS_FILE)
    if os.path.isfile(exported):
        return (
            f"Build the model with the sizes in {exported} (the hyperparameters it was "
            "trained with), e.g. the matching hparams/classifier_<model>.yaml with the "
            "same overrides."
        )
    return (
        "Use the YAML (hparams/classifier_<model>.yaml and its size overrides) that trained "
        f"this checkpoint, or re-train with `{hint}`."
    )


def _to_own_layout(module: torch.nn.Module, state: dict, path: str, what: str) -> dict:
    """``module.convert_published_state_dict(state)`` when the module has one (our models),
    else ``state``; its ValueErrors are prefixed with the file."""
    convert = getattr(module, "convert_published_state_dict", None)
    if convert is None:  # a plain torch module (tests, examples): no published layout
        return state
    try:
        return convert(state)
    except ValueError as err:
        raise ValueError(f"Cannot load the {what} checkpoint {path}: {err}") from err


def _check_compatible(module: torch.nn.Module, state: dict, path: str, what: str, hint: str):
    """Raise a clear ValueError when ``state`` does not fit ``module`` exactly."""
    own = module.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    mismatched = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or mismatched):
        return
    if what == "classifier" and not (missing or unexpected) and mismatched:
        # Same head layout, different rows: the number of classes differs.
        first = sorted(mismatched)[0]
        ckpt_shape, own_shape = tuple(state[first].shape), tuple(own[first].shape)
        if ckpt_shape[1:] == own_shape[1:] and len(ckpt_shape) >= 1:
            raise ValueError(
                f"The classifier checkpoint {path} has {ckpt_shape[0]} classes but the model "
                f"is built with out_n_neurons={own_shape[0]}. Pass --out_n_neurons "
                f"{ckpt_shape[0]} (or use the checkpoint trained on your classes)."
            )
    details = []
    if missing:
        details.append(f"missing keys: {_few(missing)}")
    if unexpected:
        details.append(f"unexpected keys: {_few(unexpected)}")
    if mismatched:
        shapes = ", ".join(
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in sorted(mismatched)[:_MAX_KEYS_SHOWN]
        )
        details.append(f"shape mismatch (checkpoint vs model): {shapes}")
    raise ValueError(
        f"The {what} checkpoint {path} was made by another architecture or model size than "
        f"the {type(module).__name__} built here ({'; '.join(details)}). "
        + _hparams_advice(path, hint)
    )


def load_classifier(
    embedding_model: torch.nn.Module,
    classifier: torch.nn.Module,
    embedding_model_path: str,
    classifier_model_path: str,
    hint: str = TRAIN_COMMAND,
) -> None:
    """Load an exported classifier (backbone + head) into the given modules, strictly.

    Both files are read and checked before either module is touched, so a failure leaves
    the modules unchanged. State dicts in the layout of SpeechBrain's released ESC-50
    checkpoints are first mapped onto ours (each module's ``convert_published_state_dict``).

    Arguments
    ---------
    embedding_model : torch.nn.Module
        Backbone built from the YAML (e.g. ``Cnn14``).
    classifier : torch.nn.Module
        Head built from the YAML (``LinearHead`` / ``CosineHead``).
    embedding_model_path : str
        Path of ``embedding_model.ckpt``.
    classifier_model_path : str
        Path of ``classifier.ckpt``.
    hint : str
        The command that creates the files, quoted in the errors (e.g. with the right
        ``hparams/classifier_<model>.yaml``).

    Raises
    ------
    FileNotFoundError
        A file does not exist.
    ValueError
        A file is corrupt, holds another architecture / model size, or another number of
        classes than the head.

    Example
    -------
    >>> import tempfile
    >>> from audio_interpretability.models import LinearHead
    >>> folder = tempfile.mkdtemp()
    >>> emb, head = torch.nn.Linear(4, 3), LinearHead(3, 2)
    >>> paths = export_classifier(emb, head, folder)
    >>> emb2, head2 = torch.nn.Linear(4, 3), LinearHead(3, 2)
    >>> load_classifier(emb2, head2, paths["embedding_model"], paths["classifier"])
    >>> bool(torch.equal(emb2.weight, emb.weight))
    True
    """
    emb_state = _read_state_dict(embedding_model_path, "embedding_model", hint)
    cls_state = _read_state_dict(classifier_model_path, "classifier", hint)
    emb_state = _to_own_layout(embedding_model, emb_state, embedding_model_path, "embedding_model")
    cls_state = _to_own_layout(classifier, cls_state, classifier_model_path, "classifier")
    _check_compatible(embedding_model, emb_state, embedding_model_path, "embedding_model", hint)
    _check_compatible(classifier, cls_state, classifier_model_path, "classifier", hint)
    embedding_model.load_state_dict(emb_state, strict=True)
    classifier.load_state_dict(cls_state, strict=True)
    logger.info("Loaded classifier from %s and %s", embedding_model_path, classifier_model_path)
