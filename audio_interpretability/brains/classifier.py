"""``ClassifierBrain``: trains the ESC-50 sound classifiers (CNN14, FocalNet, ViT) we explain.

One training batch goes through::

    wav (B, T) [+ WHAM! noise at wham_snr_db, train only]
        -> wav_augment (DropFreq + DropChunk, train only; may concatenate the originals,
           so the batch can grow to B' and the labels are replicated to match)
        -> Frontend (STFT once) -> X = log1p|STFT| (B', frames, bins)
        -> AudioClassifier(X) -> logits (B', C)
        -> cross-entropy(logits, labels)

The loss is plain cross-entropy on the logits for every backbone. For FocalNet / ViT the head
is :class:`~audio_interpretability.models.heads.CosineHead`, whose logits are ``scale * cos``;
the published FocalNet / ViT recipes trained that head with an additive angular margin loss on
the cosines, we use cross-entropy on the scaled cosines (no margin), which converges faster
on the small data sets we train on and yields the same kind of head.

Learning rate: Adam, with ``lr_annealing`` chosen by ``lr_schedule`` (:func:`make_lr_annealing`):
``cyclic`` (published) is SpeechBrain's ``CyclicLRScheduler``, stepped on every training and
validation batch where the published ``train.py`` steps it (``compute_objectives``, every stage
but test); ``plateau`` (ours) is SpeechBrain's ``ReduceLROnPlateau`` on the validation loss,
once per epoch. Either is checkpointed, so resuming with a larger ``number_of_epochs``
continues the same schedule. Gradients are clipped by the Brain (``max_grad_norm``, 5 by
default). A checkpoint is saved after every validation, keeping the latest (for resuming) and
the one with the lowest validation ``error``; testing uses the latter and writes
``test_metrics_file`` (JSON) and ``confusion_matrix_file`` (PNG).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import speechbrain as sb
import torch
from speechbrain.nnet.schedulers import CyclicLRScheduler, ReduceLROnPlateau

from audio_interpretability.checkpointing import apply_umask, register_random_states
from audio_interpretability.data.wham import (
    NOISE_KEY,
    ClipNoiseMixin,
    WhamNoise,
    mix_at_snr,
    wham_noise_in_workers,
)
from audio_interpretability.distributed import DistributedBrainMixin, all_reduce_sum
from audio_interpretability.models.base import ClassifierOutput

logger = logging.getLogger(__name__)


#: Values of ``lr_schedule``: the published per-batch cyclic schedule, our per-epoch plateau one.
LR_SCHEDULES = ("cyclic", "plateau")


def make_lr_annealing(
    lr_schedule: str,
    base_lr: float,
    max_lr: float,
    step_size: int,
    lr_min: float,
    lr_factor: float,
    lr_patience: int,
) -> CyclicLRScheduler | ReduceLROnPlateau:
    """The classifier's LR scheduler (YAML ``lr_annealing``), chosen by ``lr_schedule``.

    Arguments
    ---------
    lr_schedule : str
        ``"cyclic"`` (published, SpeechBrain ``recipes/ESC50/classification/hparams/*.yaml``):
        ``CyclicLRScheduler(base_lr, max_lr, step_size)`` (triangular), which
        :class:`ClassifierBrain` steps on every training and validation batch; after ``n``
        batches the LR is ``base_lr + (max_lr - base_lr) * n / step_size`` for
        ``n <= step_size``, then falls back over the next ``step_size`` batches.
        ``"plateau"`` (ours): ``ReduceLROnPlateau(lr_min, lr_factor, lr_patience)`` on the
        validation loss, once per epoch.
    base_lr, max_lr, step_size : float, float, int
        The cyclic schedule's bounds and half period in batches (published: 1e-8, ``lr``,
        65000). Unused by ``"plateau"``.
    lr_min, lr_factor, lr_patience : float, float, int
        The plateau schedule's floor, factor and patience in epochs. Unused by ``"cyclic"``.

    Returns
    -------
    CyclicLRScheduler or ReduceLROnPlateau
        SpeechBrain's scheduler (both are checkpointable recoverables).

    Example
    -------
    >>> make_lr_annealing("cyclic", 0.0, 1.0, 4, 1e-5, 0.5, 1).clr(1)
    0.25
    >>> type(make_lr_annealing("plateau", 0.0, 1.0, 4, 1e-5, 0.5, 1)).__name__
    'ReduceLROnPlateau'
    """
    if lr_schedule == "cyclic":
        return CyclicLRScheduler(base_lr=base_lr, max_lr=max_lr, step_size=step_size)
    if lr_schedule == "plateau":
        return ReduceLROnPlateau(
            lr_min=lr_min, factor=lr_factor, patience=lr_patience, dont_halve_until_epoch=0
        )
    raise ValueError(
        f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}; pass --lr_schedule "
        "cyclic (published: CyclicLRScheduler stepped on every training and validation batch) "
        "or --lr_schedule plateau (ours: ReduceLROnPlateau on the validation loss per epoch)"
    )


def _atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        apply_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def classification_report(confusion: torch.Tensor, class_names: list[str]) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix as plain Python values.

    Arguments
    ---------
    confusion : torch.Tensor
        (C, C) counts, rows = true class, columns = predicted class.
    class_names : list of str
        C class names, in index order.

    Returns
    -------
    dict
        ``accuracy`` (float), ``error`` (float), ``n_samples`` (int), ``class_names``,
        ``per_class_accuracy`` ({name: float, or None for a class without samples}),
        ``confusion_matrix`` (C x C nested lists of int).

    Example
    -------
    >>> report = classification_report(torch.tensor([[3, 1], [0, 0]]), ["dog", "rain"])
    >>> report["accuracy"], report["per_class_accuracy"]
    (0.75, {'dog': 0.75, 'rain': None})
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got {tuple(confusion.shape)}")
    if len(class_names) != confusion.shape[0]:
        raise ValueError(
            f"{len(class_names)} class names for a {confusion.shape[0]}-class confusion matrix; "
            "give one name per class (label encoder order)"
        )
    confusion = confusion.detach().cpu().long()
    n_samples = int(confusion.sum())
    correct = int(confusion.diagonal().sum())
    accuracy = correct / n_samples if n_samples else 0.0
    per_class = {}
    for i, name in enumerate(class_names):
        total = int(confusion[i].sum())
        per_class[name] = int(confusion[i, i]) / total if total else None
    return {
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
        "n_samples": n_samples,
        "class_names": list(class_names),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def save_confusion_matrix_png(confusion: list, class_names: list[str], path: str) -> None:
    """Plot a (C, C) confusion matrix (rows true, columns predicted) to a PNG, atomically.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "cm.png")
    >>> save_confusion_matrix_png([[2, 0], [1, 1]], ["a", "b"], path)
    >>> os.path.getsize(path) > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    side = min(4 + 0.35 * n, 20)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(confusion, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".confusion_", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        apply_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


class ClassifierBrain(ClipNoiseMixin, DistributedBrainMixin, sb.Brain):
    """Brain that trains and tests an :class:`~audio_interpretability.models.AudioClassifier`.

    Expects ``modules`` with ``frontend`` (:class:`~audio_interpretability.features.Frontend`)
    and ``model`` (``AudioClassifier``), and the hparams ``out_n_neurons``, ``add_wham_noise``,
    ``wham_folder``, ``wham_snr_db``, ``wham_noise_in_workers`` (absent: False; True: the
    training noise is drawn per clip in the DataLoader workers, see :meth:`make_dataloader`),
    ``sample_rate``, ``seed``, ``wav_augment``,
    ``compute_cost``, ``lr_annealing``, ``epoch_counter``, ``train_logger``,
    ``test_metrics_file`` and ``confusion_matrix_file`` (see ``hparams/classifier_*.yaml``).

    Arguments
    ---------
    *args, **kwargs
        As :class:`speechbrain.Brain` (modules, opt_class, hparams, run_opts, checkpointer).
    class_names : list of str, optional
        Names of the ``out_n_neurons`` classes in index order (label encoder), used in the
        test metrics; defaults to "0", "1", ...

    Example
    -------
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> from audio_interpretability.features import Frontend
    >>> from audio_interpretability.models import AudioClassifier, LinearHead
    >>> from audio_interpretability.models.cnn14 import Cnn14
    >>> from speechbrain.augment.augmenter import Augmenter
    >>> model = AudioClassifier(Cnn14(emb_dim=8, base_channels=2), LinearHead(8, 3))
    >>> hparams = dict(out_n_neurons=3, add_wham_noise=False, wham_folder=None, wham_snr_db=0.0,
    ...                sample_rate=16000, seed=0, wav_augment=Augmenter(),
    ...                compute_cost=torch.nn.CrossEntropyLoss())
    >>> brain = ClassifierBrain(modules={"frontend": Frontend(), "model": model},
    ...                         hparams=hparams, run_opts={"device": "cpu"})
    >>> batch = PaddedBatch([{"sig": torch.randn(16000)}, {"sig": torch.randn(16000)}])
    >>> brain.compute_forward(batch, sb.Stage.VALID).logits.shape
    torch.Size([2, 3])
    """

    def __init__(self, *args, class_names: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        n_classes = self.hparams.out_n_neurons
        if class_names is None:
            class_names = [str(i) for i in range(n_classes)]
        if len(class_names) != n_classes:
            raise ValueError(
                f"{len(class_names)} class names for out_n_neurons={n_classes}; pass "
                f"--out_n_neurons {len(class_names)} to match the data"
            )
        self.class_names = list(class_names)
        # Created once: its private RNG keeps drawing new crops batch after batch (seeded per
        # DDP process, so that processes do not draw the same crops).
        self.wham = WhamNoise.from_hparams(self.hparams.__dict__, split="tr")
        wham_noise_in_workers(self.hparams.__dict__)  # a bad value fails now, not in fit
        self.confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
        self.train_stats: dict = {}

    # ----------------------------------------------------------------------------------------
    # Forward and loss
    # ----------------------------------------------------------------------------------------
    @property
    def training_noise(self):
        """The noise source of the training clips (:class:`ClipNoiseMixin`): :attr:`wham`."""
        return self.wham

    def add_noise(
        self, wavs: torch.Tensor, lens: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mix WHAM! noise into (B, T) ``wavs`` at ``wham_snr_db`` (padding stays silent):
        ``noise`` (B, T) when given (the batch's ``noise_sig``), else a fresh draw of the
        noise source's generator."""
        if noise is None:
            noise = self.wham.sample(wavs.shape[0], wavs.shape[1])  # (B, T)
        noise = noise.to(wavs.device)
        positions = torch.arange(wavs.shape[1], device=wavs.device)  # (T,)
        valid = positions[None, :] < (lens[:, None] * wavs.shape[1]).round()  # (B, T)
        return mix_at_snr(wavs, noise * valid, snr_db=self.hparams.wham_snr_db)

    def compute_forward(self, batch, stage) -> ClassifierOutput:
        """Waveforms -> (noise, augmentation when training) -> STFT -> logits (B', C)."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig  # (B, T), (B,)
        if stage == sb.Stage.TRAIN:
            if self.wham is not None:
                noise = getattr(batch, NOISE_KEY).data if hasattr(batch, NOISE_KEY) else None
                wavs = self.add_noise(wavs, lens, noise)
            wavs, lens = self.hparams.wav_augment(wavs, lens)  # (B', T)
        spec = self.modules.frontend(wavs)
        return self.modules.model(spec.X)

    def compute_objectives(self, predictions: ClassifierOutput, batch, stage) -> torch.Tensor:
        """Cross-entropy of the logits; accumulates the stage's confusion matrix; steps a
        cyclic ``lr_annealing`` on training and validation batches (as published)."""
        labels = batch.class_string_encoded.data[:, 0]  # (B,)
        if stage == sb.Stage.TRAIN:
            labels = self.hparams.wav_augment.replicate_labels(labels)  # (B',)
        logits = predictions.logits  # (B', C)
        loss = self.hparams.compute_cost(logits, labels)
        if stage != sb.Stage.TEST and isinstance(self.hparams.lr_annealing, CyclicLRScheduler):
            # Published train.py, compute_objectives: `if stage != sb.Stage.TEST:
            # self.hparams.lr_annealing.on_batch_end(self.optimizer)`, i.e. one step per
            # training batch (before its optimizer step) and per validation batch.
            self.hparams.lr_annealing.on_batch_end(self.optimizer)
        predicted = logits.detach().argmax(dim=-1)
        n_classes = self.hparams.out_n_neurons
        index = (labels * n_classes + predicted).cpu()  # (B',) flat (true, predicted) cell
        counts = torch.bincount(index, minlength=n_classes**2)  # (C * C,)
        self.confusion += counts.reshape(n_classes, n_classes)  # (C, C)
        return loss

    # ----------------------------------------------------------------------------------------
    # Stage hooks
    # ----------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Put the random states (global generators, WHAM! noise) in the checkpoints, then
        initialise the optimizer and recover as SpeechBrain does."""
        register_random_states(self.checkpointer, self.wham)
        super().on_fit_start()

    def on_stage_start(self, stage, epoch=None) -> None:
        """Reset the confusion matrix; in TRAIN, the training set's per-clip noise gets its
        epoch (:class:`ClipNoiseMixin`)."""
        super().on_stage_start(stage, epoch)
        self.confusion.zero_()

    def on_stage_end(self, stage, stage_loss, epoch=None) -> None:
        """Log loss / error / accuracy; anneal the lr (plateau) and checkpoint after validation;
        write the test metrics after testing."""
        # Under DDP: the confusion matrix and the loss of every process's clips (validation
        # and test sets are sharded without padding, so each clip is counted once).
        confusion = all_reduce_sum(self.confusion).round().long()
        stage_loss = self.stage_loss_over_processes(stage_loss)
        report = classification_report(confusion, self.class_names)
        stats = {"loss": stage_loss, "error": report["error"], "acc": report["accuracy"]}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
        elif stage == sb.Stage.VALID:
            if isinstance(self.hparams.lr_annealing, CyclicLRScheduler):
                # Published on_stage_end: `old_lr, new_lr = self.hparams.lr_annealing(epoch)`
                # (the LR before the last batch step and the one the next step sets).
                old_lr, new_lr = self.hparams.lr_annealing(epoch)
            else:
                old_lr, new_lr = self.hparams.lr_annealing([self.optimizer], epoch, stats["loss"])
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            # Plain floats only: the checkpointer reads meta back with a safe YAML loader.
            self.checkpointer.save_and_keep_only(
                meta={"error": stats["error"], "loss": stats["loss"]}, min_keys=["error"]
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )
            report["loss"] = stats["loss"]
            if sb.utils.distributed.if_main_process():
                self.write_test_report(report)

    def write_test_report(self, report: dict) -> None:
        """Write ``test_metrics_file`` (JSON) and ``confusion_matrix_file`` (PNG)."""
        _atomic_write_text(self.hparams.test_metrics_file, json.dumps(report, indent=2) + "\n")
        save_confusion_matrix_png(
            report["confusion_matrix"], report["class_names"], self.hparams.confusion_matrix_file
        )
        logger.info(
            "Test accuracy %.4f on %d clips; metrics in %s",
            report["accuracy"],
            report["n_samples"],
            self.hparams.test_metrics_file,
        )
