"""The classifier's LR schedule (docs/DIFFERENCES.md, C2) through the real ``ClassifierBrain``.

``lr_schedule: cyclic`` (published): SpeechBrain's ``CyclicLRScheduler`` stepped on every training
and validation batch, so after ``n`` of them the LR is ``base_lr + (max_lr - base_lr) n /
step_size`` (``n <= step_size``); checkpointed, so a resumed run continues the ramp.
``lr_schedule: plateau`` (ours): ``ReduceLROnPlateau`` once per epoch.

tiny_esc50 at batch 10: 3 training batches (folds 1-3, 30 clips) and 1 validation batch
(fold 4, 10 clips) per epoch.
"""

from pathlib import Path

import pytest
import torch
from helpers import load_script
from hyperpyyaml import load_hyperpyyaml
from speechbrain.nnet.schedulers import CyclicLRScheduler, ReduceLROnPlateau

from audio_interpretability.brains.classifier import ClassifierBrain, make_lr_annealing

ROOT = Path(__file__).resolve().parents[1]
TRAIN_BATCHES, VALID_BATCHES = 3, 1
BASE_LR, MAX_LR, STEP_SIZE = 1e-6, 1e-2, 100


def _load_recipe():
    module = load_script(
        "classification_train_lr", ROOT / "recipes" / "ESC50" / "classification" / "train.py"
    )
    return module


recipe = _load_recipe()


def published_lr(n: int) -> float:
    """The published schedule's LR after ``n`` batch steps (rising half, ``n <= step_size``)."""
    return BASE_LR + (MAX_LR - BASE_LR) * n / STEP_SIZE


def argv(data_folder, out: Path, *extra, epochs=1):
    """A tiny CNN14 run with a short cyclic schedule (so the ramp is measurable)."""
    return [
        str(ROOT / "hparams" / "classifier_cnn14.yaml"),
        "--data_folder", str(data_folder),
        "--output_folder", str(out / "exp"),
        "--pretrained_folder", str(out / "pretrained"),
        "--out_n_neurons", "5",
        "--number_of_epochs", str(epochs),
        "--batch_size", "10",
        "--device", "cpu",
        "--noprogressbar",
        "--base_channels", "2", "--emb_dim", "16", "--n_mels", "32",
        "--lr", str(MAX_LR), "--base_lr", str(BASE_LR), "--step_size", str(STEP_SIZE),
        *extra,
    ]  # fmt: skip


@pytest.fixture
def train_lrs(monkeypatch):
    """The optimizer's LR at every training step, in order (read after the step)."""
    seen = []

    def record(self, batch, outputs, loss, should_step):
        seen.append(self.optimizer.param_groups[0]["lr"])

    monkeypatch.setattr(ClassifierBrain, "on_fit_batch_end", record, raising=False)
    return seen


def latest_checkpoint(out: Path) -> Path:
    ckpts = sorted((out / "exp" / "save").glob("CKPT+*"))
    return max(ckpts, key=lambda c: int((c / "counter.ckpt").read_text()))


def test_cyclic_is_the_default():
    with open(ROOT / "hparams" / "classifier_cnn14.yaml", encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, {"data_folder": "unused"})
    scheduler = hparams["lr_annealing"]
    assert hparams["lr_schedule"] == "cyclic"
    assert isinstance(scheduler, CyclicLRScheduler)
    # The published values: base_lr 1e-8, max_lr = lr, step_size 65000.
    assert (scheduler.base_lr, scheduler.max_lr, scheduler.step_size) == (1e-8, 2e-4, 65000)
    assert hparams["checkpointer"].recoverables["lr_annealing"] is scheduler


def test_cyclic_steps_on_training_and_validation_batches_and_resumes(
    tiny_esc50, tmp_path, train_lrs
):
    per_epoch = TRAIN_BATCHES + VALID_BATCHES
    recipe.main(argv(tiny_esc50, tmp_path, epochs=1))
    # Training batch k of epoch 1 runs at the LR after k steps.
    assert train_lrs == pytest.approx([published_lr(n) for n in (1, 2, 3)], rel=1e-9)
    ckpt = torch.load(latest_checkpoint(tmp_path) / "lr_annealing.ckpt", weights_only=True)
    assert ckpt["clr_iterations"] == per_epoch  # the validation batch counted too

    # Resume for a second epoch: a fresh process-like run recovers the scheduler and
    # continues the ramp (without its state, the ramp would restart at step 1).
    train_lrs.clear()
    recipe.main(argv(tiny_esc50, tmp_path, epochs=2))
    assert train_lrs == pytest.approx([published_lr(n) for n in (5, 6, 7)], rel=1e-9)
    ckpt = torch.load(latest_checkpoint(tmp_path) / "lr_annealing.ckpt", weights_only=True)
    assert ckpt["clr_iterations"] == 2 * per_epoch
    log = (tmp_path / "exp" / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1 and log.count("epoch: 2,") == 1


def test_plateau_keeps_the_lr_within_an_epoch(tiny_esc50, tmp_path, train_lrs):
    recipe.main(argv(tiny_esc50, tmp_path, "--lr_schedule", "plateau", epochs=1))
    assert train_lrs == [MAX_LR] * TRAIN_BATCHES  # lr, untouched until the epoch ends
    ckpt = latest_checkpoint(tmp_path)
    state = torch.load(ckpt / "lr_annealing.ckpt", weights_only=True)
    assert "clr_iterations" not in state and "anchor" in state  # ReduceLROnPlateau's state


def test_plateau_option_builds_reduce_on_plateau():
    scheduler = make_lr_annealing("plateau", 1e-8, 2e-4, 65000, 1e-5, 0.5, 1)
    assert isinstance(scheduler, ReduceLROnPlateau)
    assert (scheduler.lr_min, scheduler.factor, scheduler.patience) == (1e-5, 0.5, 1)


def test_unknown_schedule_is_refused_at_construction(tiny_esc50, tmp_path):
    with pytest.raises(ValueError, match=r"'cyclic', 'plateau'.*--lr_schedule"):
        recipe.main(argv(tiny_esc50, tmp_path, "--lr_schedule", "onecycle"))
