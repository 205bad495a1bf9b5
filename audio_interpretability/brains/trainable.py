"""``TrainableInterpreterBrain``: the training life cycle every trainable interpreter shares.

L-MAC, L2I and PIQ each train a network ``psi`` (hparam ``psi_model``, the published name) on
top of a frozen classifier. What is the same for all of them lives here, once:

* **load / export** the trained network: ``pretrained_interpreter`` (a ``psi_model.ckpt``
  state dict, or a folder holding one) is loaded strictly at construction, with errors that
  say what the file is and what to pass; after each validation where the new checkpoint is
  the best, ``psi_model.ckpt`` is exported (atomically) into the checkpoint folder;
* **best checkpoint** by ``ckpt_key`` / ``ckpt_mode`` (checked against the validation
  statistics), meta of plain floats (SpeechBrain's safe YAML loader reads them back);
* **LR annealing** after each validation (published: ``lr_annealing`` on ``-fid_in``);
* **resume guard**: a run refuses to resume checkpoints of another training stage
  (:meth:`training_stage`: L-MAC pre-training 0, fine-tuning 1), which would mix the two;
* validation interpretations every ``interpret_period`` epochs, as published.

A subclass defines :meth:`make_mask` and :meth:`interpreter_loss` (and, optionally,
:meth:`training_stage`, :meth:`describe_state_mismatch`, :meth:`annealing_value`).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import speechbrain as sb
import torch

from audio_interpretability.brains.interpreter import InterpreterBrain
from audio_interpretability.checkpointing import apply_umask, register_random_states

logger = logging.getLogger(__name__)

__all__ = ["CKPT_MODES", "PSI_FILE", "TrainableInterpreterBrain", "train_and_test"]

CKPT_MODES = ("min", "max")
#: File name of the exported interpreter network (``<save_folder>/psi_model.ckpt``).
PSI_FILE = "psi_model.ckpt"


class TrainableInterpreterBrain(InterpreterBrain):
    """Base of the interpreters that train a network ``psi`` (see the module docstring).

    Hparams it reads besides those of :class:`InterpreterBrain`: ``psi_model`` (the trained
    network, also in ``modules``), ``save_folder``, ``pretrained_interpreter``, ``test_only``,
    ``lr_annealing`` (a SpeechBrain scheduler called ``(optimizers, epoch, value)`` after each
    validation), ``ckpt_key`` / ``ckpt_mode`` and ``interpret_period``.

    Arguments
    ---------
    *args, **kwargs
        As :class:`InterpreterBrain`.
    """

    #: The recipe that trains this interpreter (named in error messages).
    train_script: str = "train_lmac.py"

    required_hparams = InterpreterBrain.required_hparams + (
        "psi_model",
        "save_folder",
        "pretrained_interpreter",
        "test_only",
        "lr_annealing",
        "ckpt_key",
        "ckpt_mode",
        "interpret_period",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.hparams.ckpt_mode not in CKPT_MODES:
            raise ValueError(f"ckpt_mode must be 'min' or 'max', got {self.hparams.ckpt_mode!r}")
        self.check_options()
        if self.hparams.test_only and not self.hparams.pretrained_interpreter:
            raise ValueError(
                "test_only is True but pretrained_interpreter is not set; pass "
                f"--pretrained_interpreter <save_folder>/{PSI_FILE} (written by a first "
                f"{self.train_script} run)"
            )
        if self.hparams.pretrained_interpreter:
            self.load_interpreter(self.hparams.pretrained_interpreter)

    # ------------------------------------------------------------------ override points
    def check_options(self) -> None:
        """Fail at construction on interpreter options that would only break later."""

    def training_stage(self) -> float:
        """Which training stage this run is (checkpoint meta ``finetuning``): 0 by default."""
        return 0.0

    def describe_state_mismatch(self, state: dict, own: dict) -> str:
        """What to pass instead, when a loaded state dict has other shapes than ours."""
        bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        shown = ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:3])
        return (
            f"other shapes than this YAML builds ({shown}); pass the same sizes it was trained with"
        )

    def annealing_value(self, summary: dict) -> float:
        """The value ``lr_annealing`` sees after validation (published: ``-fid_in``)."""
        return -float(summary["fid_in"])

    # ------------------------------------------------------------------ load / export
    def load_interpreter(self, path: str) -> None:
        """Load a trained ``psi_model`` (``psi_model.ckpt``, or a checkpoint folder holding one).

        Raises
        ------
        FileNotFoundError
            The file does not exist.
        ValueError
            The file is not a state_dict of this network (other keys or shapes).
        """
        path = str(path)
        if os.path.isdir(path):
            path = os.path.join(path, PSI_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained_interpreter {path} does not exist; train an interpreter with "
                f"recipes/ESC50/interpret/{self.train_script} (it writes "
                f"<save_folder>/{PSI_FILE}) and pass that file"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle / zip / EOF errors all mean "not a checkpoint"
            raise ValueError(
                f"pretrained_interpreter {path} is not a torch state_dict ({err}); pass the "
                f"{PSI_FILE} written by {self.train_script}"
            ) from err
        network = self.hparams.psi_model
        own = network.state_dict()
        if not isinstance(state, dict) or set(state) != set(own):
            raise ValueError(
                f"pretrained_interpreter {path} is not a {type(network).__name__} state_dict; "
                f"pass the {PSI_FILE} written by {self.train_script}"
            )
        if any(tuple(own[k].shape) != tuple(state[k].shape) for k in own):
            raise ValueError(
                f"pretrained_interpreter {path}: {self.describe_state_mismatch(state, own)}"
            )
        network.load_state_dict(state)
        logger.info("Loaded the %s interpreter from %s", type(self).__name__, path)

    def export_interpreter(self, path: str | None = None) -> Path:
        """Write ``psi_model``'s state_dict atomically (default: ``psi_model.ckpt`` in the
        checkpoint folder)."""
        folder = self.hparams.save_folder
        if self.checkpointer is not None:
            folder = self.checkpointer.checkpoints_dir
        path = Path(path or os.path.join(folder, PSI_FILE))
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.hparams.psi_model.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".psi_", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            apply_umask(tmp)  # mkstemp creates 0600
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        logger.info("Exported the %s interpreter to %s", type(self).__name__, path)
        return path

    def best_checkpoint_key(self) -> dict:
        """``{"min_key": ckpt_key}`` or ``{"max_key": ckpt_key}`` for ``evaluate``/recovery."""
        return {f"{self.hparams.ckpt_mode}_key": self.hparams.ckpt_key}

    # ------------------------------------------------------------------ fit
    def prepare_checkpoint_folder(self) -> None:
        """Hook before the resume guard (L-MAC moves fine-tuning into a subfolder)."""

    def on_fit_start(self):
        """Refuse to resume checkpoints of another training stage, then recover."""
        if self.checkpointer is None:
            raise ValueError(
                f"{type(self).__name__} training needs a checkpointer (it keeps the best "
                "interpreter); pass checkpointer=hparams['checkpointer']"
            )
        self.prepare_checkpoint_folder()
        stage = self.training_stage()
        other = [
            ckpt
            for ckpt in self.checkpointer.list_checkpoints()
            if "finetuning" in ckpt.meta and float(ckpt.meta["finetuning"]) != stage
        ]
        if other:
            kind = "pre-training" if stage else "fine-tuning"
            raise ValueError(
                f"{self.checkpointer.checkpoints_dir} holds checkpoints of a {kind} run; "
                "resuming from them would mix the two stages. Pass a new --output_folder "
                "for this run."
            )
        # Random states in the checkpoint: a resumed run repeats the uninterrupted one.
        register_random_states(self.checkpointer, self.noise)
        super().on_fit_start()

    def holds_stage(self, stage: float) -> bool:
        """Whether the checkpoint folder holds checkpoints of training stage ``stage``."""
        return any(
            "finetuning" in ckpt.meta and float(ckpt.meta["finetuning"]) == stage
            for ckpt in self.checkpointer.list_checkpoints()
        )

    @property
    def run_folder(self) -> Path:
        """Where this run's test metrics go: ``output_folder``, or the same subfolder of it
        as the checkpoint folder is of ``save_folder`` (L-MAC's ``finetuning/``)."""
        out = Path(self.hparams.output_folder)
        if self.checkpointer is None:
            return out
        ckpt_dir = Path(self.checkpointer.checkpoints_dir).resolve()
        save = Path(self.hparams.save_folder).resolve()
        if ckpt_dir != save and ckpt_dir.is_relative_to(save):
            return out / ckpt_dir.relative_to(save)
        return out

    def interpretations_folder(self, stage, epoch=None) -> Path | None:
        """Base (TEST) plus, as published, validation every ``interpret_period`` epochs (0:
        never): ``<run_folder>/valid_interpretations/epoch_<N>``."""
        period = int(self.hparams.interpret_period)
        if stage == sb.Stage.VALID and period > 0 and epoch is not None and epoch % period == 0:
            return self.run_folder / "valid_interpretations" / f"epoch_{epoch}"
        return super().interpretations_folder(stage, epoch)

    def on_valid_end(self, summary: dict, epoch) -> None:
        """Anneal the learning rate, log, checkpoint, export the best ``psi_model``."""
        if self.hparams.ckpt_key not in summary:
            raise ValueError(
                f"ckpt_key {self.hparams.ckpt_key!r} is not a validation statistic; use one of "
                f"{', '.join(sorted(summary))}"
            )
        old_lr, new_lr = self.hparams.lr_annealing(
            [self.optimizer], epoch, self.annealing_value(summary)
        )
        sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "lr": old_lr},
            train_stats=getattr(self, "train_stats", None),
            valid_stats=summary,
        )
        meta = {k: float(v) for k, v in summary.items()}
        meta.update(epoch=float(epoch), finetuning=float(self.training_stage()))
        self.checkpointer.save_and_keep_only(
            meta=meta, **{f"{self.hparams.ckpt_mode}_keys": [self.hparams.ckpt_key]}
        )
        best = self.checkpointer.find_checkpoint(**self.best_checkpoint_key())
        latest = self.checkpointer.find_checkpoint()
        if best is not None and latest is not None and best.path == latest.path:
            if sb.utils.distributed.if_main_process():
                self.export_interpreter()


def train_and_test(brain_class: type, hparams: dict, run_opts: dict) -> dict:
    """What ``train_lmac.py``, ``train_l2i.py`` and ``train_piq.py`` do, written once.

    Builds the noise sources once (training / validation, and test from ``wham_test_split``:
    checked before any work), fits ``brain_class`` (unless ``test_only``), then tests the best
    checkpoint on ``test_fold_nums``: ``<run_folder>/test_metrics.json`` (with the test noise
    when ``add_wham_noise``) and ``<run_folder>/clean/test_metrics.json`` (with noise only).

    Returns
    -------
    dict
        ``{setting: metrics}`` ("main", and "clean" with noise).
    """
    from audio_interpretability.brains.evaluation import evaluate_setting
    from audio_interpretability.data.wham import WhamNoise
    from audio_interpretability.recipe_utils import prepare_datasets, wham_test_split

    datasets = prepare_datasets(hparams)
    test_only = hparams["test_only"]
    noise = WhamNoise.from_hparams(hparams)
    test_noise = WhamNoise.from_hparams(hparams, split=wham_test_split(hparams))
    brain = brain_class(
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
    # The best checkpoint (test_only: the pretrained_interpreter loaded at start-up).
    folder = str(brain.run_folder)  # output_folder, or L-MAC's finetuning/ subfolder
    settings = {"main": (folder, test_noise)}
    if test_noise is not None:
        settings["clean"] = (os.path.join(folder, "clean"), None)
    return {
        name: evaluate_setting(
            brain,
            datasets["test"],
            setting_folder,
            hparams["test_dataloader_options"],
            noise=setting_noise,
            **brain.best_checkpoint_key(),
        )
        for name, (setting_folder, setting_noise) in settings.items()
    }
