"""WHAM! training noise drawn per clip in the DataLoader workers (``wham_noise_in_workers``).

Each training clip's noise is :meth:`WhamNoise.sample_for` ``(clip id, epoch)``, a dynamic item
(``noise_sig``) of the training set: the same whatever the number of workers, the batch order,
the DDP rank, and across a killed and resumed run; ``--wham_noise_in_workers False`` keeps the
forward-pass draws of the source's generator (the path of older runs).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from audio_interpretability.brains.lmac import LMAC
from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.data.wham import NOISE_KEY, WhamNoise, mix_at_snr
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.heads import LinearHead
from audio_interpretability.recipe_utils import load_recipe, prepare_datasets

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "hparams" / "lmac_cnn14.yaml"
N_CLASSES = 5
TINY = {"base_channels": 2, "emb_dim": 64, "decoder_width": 16, "out_n_neurons": N_CLASSES}


@pytest.fixture(scope="module")
def long_wham(tmp_path_factory) -> str:
    """WHAM! noise whose files are all longer than the 1 s clips: every crop has a random
    offset, so two different draws cannot both be a zero-padded whole file."""
    from audio_interpretability.data.synthetic import generate_wham_noise

    folder = str(tmp_path_factory.mktemp("long_wham") / "wham_noise")
    generate_wham_noise(
        folder, n_files=(3, 1, 1), sample_rate=16000, min_duration=1.5, max_duration=2.5, seed=1
    )
    return folder


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> dict:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("classifier")
    return export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, N_CLASSES), folder)


def make_brain(tmp_path, data, wham, clf, **overrides):
    """A tiny L-MAC with WHAM! noise, and its training set (folds 1 and 2: 20 clips)."""
    values = {
        "data_folder": str(data),
        "output_folder": str(tmp_path / "out"),
        "embedding_model_path": clf["embedding_model"],
        "classifier_model_path": clf["classifier"],
        "num_threads": 0,
        "train_fold_nums": [1, 2],
        "add_wham_noise": True,
        "wham_folder": str(wham),
        **TINY,
        **overrides,
    }
    with open(YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, values)
    train = prepare_datasets(hparams, splits=("train",))["train"]
    brain = LMAC(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": "cpu", "noprogressbar": True},
        checkpointer=hparams["checkpointer"],
    )
    return brain, train


def epoch_noise(brain, loader, epoch) -> dict:
    """``{clip id: noise_sig}`` of one epoch of the training loader."""
    brain.on_stage_start(sb.Stage.TRAIN, epoch)
    noise = {}
    for batch in loader:
        for key, row in zip(batch.id, getattr(batch, NOISE_KEY).data):
            noise[key] = row.clone()
    return noise


# --------------------------------------------------------------------------------------------
# (a) the per-clip draw
# --------------------------------------------------------------------------------------------
def test_sample_for_is_a_function_of_clip_and_epoch(long_wham, monkeypatch):
    global_state = torch.get_rng_state()
    noise = WhamNoise(long_wham, sample_rate=16000, seed=7)
    generator_state = noise.generator.get_state()
    a = noise.sample_for("1-100-A-0", 1, 16000)
    assert a.shape == (16000,) and a.dtype == torch.float32 and a.abs().max() > 0
    assert torch.equal(noise.sample_for("1-100-A-0", 1, 16000), a)  # same clip and epoch
    assert torch.equal(
        WhamNoise(long_wham, sample_rate=16000, seed=7).sample_for("1-100-A-0", 1, 16000), a
    )
    draws = [noise.sample_for(k, e, 16000) for k in ("1-100-A-0", "1-101-A-0") for e in (1, 2, 3)]
    for i in range(len(draws)):
        for j in range(i):
            assert not torch.equal(draws[i], draws[j]), (i, j)  # other clip or other epoch
    assert not torch.equal(WhamNoise(long_wham, seed=8).sample_for("1-100-A-0", 1, 16000), a)
    # the forward-pass generator and the global RNG are untouched
    assert torch.equal(noise.generator.get_state(), generator_state)
    assert torch.equal(torch.get_rng_state(), global_state)
    # DDP: the generator is seeded seed + rank, the per-clip draw is not
    hparams = {"add_wham_noise": True, "wham_folder": long_wham, "wham_split": "tr",
               "seed": 7, "sample_rate": 16000}  # fmt: skip
    monkeypatch.setenv("RANK", "1")
    rank1 = WhamNoise.from_hparams(hparams)
    assert rank1.seed == 8 and torch.equal(rank1.sample_for("1-100-A-0", 1, 16000), a)


# --------------------------------------------------------------------------------------------
# (b) the noise a batch gets: any number of workers, the epoch reaching forked workers
# --------------------------------------------------------------------------------------------
def test_batch_noise_same_with_0_and_2_workers(tmp_path, tiny_esc50, long_wham, classifier_ckpt):
    brain, train = make_brain(tmp_path, tiny_esc50, long_wham, classifier_ckpt)
    by_workers = {}
    for workers in (0, 2):
        loader = brain.make_dataloader(
            train, sb.Stage.TRAIN, batch_size=4, shuffle=True, num_workers=workers
        )
        by_workers[workers] = {e: epoch_noise(brain, loader, e) for e in (1, 2)}
    assert by_workers[0].keys() == by_workers[2].keys() == {1, 2}
    for epoch in (1, 2):
        zero, two = by_workers[0][epoch], by_workers[2][epoch]
        assert len(zero) == 20 and zero.keys() == two.keys()
        for key in zero:
            assert torch.equal(zero[key], two[key]), (epoch, key)
            assert torch.equal(zero[key], brain.noise.sample_for(key, epoch, 16000))
    key = next(iter(by_workers[2][1]))
    assert not torch.equal(by_workers[2][1][key], by_workers[2][2][key])  # epoch 2 reached them

    # prepare_wavs mixes the batch's noise exactly as the generator's, and leaves the
    # generator alone (validation keeps drawing from it)
    state = brain.noise.generator.get_state()
    batch = next(iter(brain.make_dataloader(train, sb.Stage.TRAIN, batch_size=4)))
    wavs, gain, noise_part = brain.prepare_wavs(batch, sb.Stage.TRAIN)
    expected, clean, part = mix_at_snr(
        batch.sig.data, getattr(batch, NOISE_KEY).data, snr_db=0.0, return_parts=True
    )
    assert torch.equal(wavs, expected) and torch.equal(noise_part, part)
    torch.testing.assert_close(gain, clean.norm(dim=1) / batch.sig.data.norm(dim=1))
    assert torch.equal(brain.noise.generator.get_state(), state)

    with pytest.raises(ValueError, match="persistent_workers: False"):
        brain.make_dataloader(
            train, sb.Stage.TRAIN, batch_size=4, num_workers=2, persistent_workers=True
        )


def test_classifier_training_mixes_the_batch_noise(
    tmp_path, tiny_esc50, long_wham, classifier_ckpt
):
    """The classifier recipe's training noise takes the same path (ClassifierBrain)."""
    from speechbrain.augment.augmenter import Augmenter

    from audio_interpretability.brains.classifier import ClassifierBrain
    from audio_interpretability.features import Frontend
    from audio_interpretability.models import AudioClassifier

    _, train = make_brain(tmp_path, tiny_esc50, long_wham, classifier_ckpt)
    model = AudioClassifier(Cnn14(emb_dim=8, base_channels=2), LinearHead(8, N_CLASSES))
    hparams = dict(out_n_neurons=N_CLASSES, add_wham_noise=True, wham_folder=long_wham,
                   wham_snr_db=0.0, sample_rate=16000, seed=0, wav_augment=Augmenter(),
                   compute_cost=torch.nn.CrossEntropyLoss(), wham_noise_in_workers=True)  # fmt: skip
    brain = ClassifierBrain(
        modules={"frontend": Frontend(), "model": model},
        hparams=hparams,
        run_opts={"device": "cpu"},
    )
    loader = brain.make_dataloader(train, sb.Stage.TRAIN, batch_size=4, num_workers=2)
    brain.on_stage_start(sb.Stage.TRAIN, 3)
    batch = next(iter(loader))
    noise = getattr(batch, NOISE_KEY).data
    for key, row in zip(batch.id, noise):
        assert torch.equal(row, brain.wham.sample_for(key, 3, 16000))
    mixed, add_noise = [], brain.add_noise
    brain.add_noise = lambda *args: mixed.append(add_noise(*args)) or mixed[-1]
    state = brain.wham.generator.get_state()
    brain.compute_forward(batch, sb.Stage.TRAIN)
    assert torch.equal(mixed[0], mix_at_snr(batch.sig.data, noise, snr_db=0.0))
    assert torch.equal(brain.wham.generator.get_state(), state)


# --------------------------------------------------------------------------------------------
# (d) wham_noise_in_workers False: the forward-pass generator, as before the key existed
# --------------------------------------------------------------------------------------------
def test_false_keeps_the_generator_path(tmp_path, tiny_esc50, long_wham, classifier_ckpt):
    brain, train = make_brain(
        tmp_path, tiny_esc50, long_wham, classifier_ckpt, wham_noise_in_workers=False
    )
    loader = brain.make_dataloader(train, sb.Stage.TRAIN, batch_size=4, num_workers=0)
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    reference = WhamNoise(long_wham, sample_rate=16000, seed=int(brain.hparams.seed))
    for batch in loader:
        assert not hasattr(batch, NOISE_KEY)
        wavs, _, noise_part = brain.prepare_wavs(batch, sb.Stage.TRAIN)
        clean = batch.sig.data
        expected, _, part = mix_at_snr(
            clean, reference.sample(*clean.shape), snr_db=0.0, return_parts=True
        )
        assert torch.equal(wavs, expected) and torch.equal(noise_part, part)
    assert torch.equal(brain.noise.generator.get_state(), reference.generator.get_state())


def test_the_key_is_checked_at_load(tmp_path, tiny_esc50):
    argv = [str(YAML), "--data_folder", str(tiny_esc50), "--output_folder", str(tmp_path)]
    argv += [x for k, v in TINY.items() for x in (f"--{k}", str(v))]
    hparams, _ = load_recipe(argv + ["--wham_noise_in_workers", "False"], create_experiment=False)
    assert hparams["wham_noise_in_workers"] is False
    with pytest.raises(ValueError, match="--wham_noise_in_workers True"):
        load_recipe(argv + ["--wham_noise_in_workers", "maybe"], create_experiment=False)


# --------------------------------------------------------------------------------------------
# (c) killed and resumed through the recipe, with 2 workers: the same as uninterrupted
# --------------------------------------------------------------------------------------------
LAUNCHER = r"""
import importlib.util, os, signal, sys

from audio_interpretability.brains.lmac import LMAC

recipe_path, argv = sys.argv[1], sys.argv[2:]
if "KILL_EPOCH" in os.environ:
    epoch, batch = int(os.environ["KILL_EPOCH"]), int(os.environ["KILL_BATCH"])
    original, calls = LMAC.compute_objectives, [0]

    def compute_objectives(self, predictions, batch_, stage):
        loss = original(self, predictions, batch_, stage)
        if stage == stage.TRAIN and self.hparams.epoch_counter.current == epoch:
            calls[0] += 1
            if calls[0] == batch:
                sys.stdout.flush(); sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return loss

    LMAC.compute_objectives = compute_objectives
spec = importlib.util.spec_from_file_location("recipe", recipe_path)
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)
recipe.main(argv)
"""


def run_lmac(tmp_path, out, data, wham, clf, **env) -> None:
    launcher = tmp_path / "_launch.py"
    launcher.write_text(LAUNCHER)
    options = {
        "data_folder": data, "output_folder": out, "embedding_model_path": clf["embedding_model"],
        "classifier_model_path": clf["classifier"], **TINY, "train_fold_nums": "[1, 2]",
        "batch_size": 4, "number_of_epochs": 2, "num_threads": 1, "num_workers": 2,
        "save_interpretations": False, "random_baseline": False, "device": "cpu",
        "add_wham_noise": True, "wham_folder": wham,
    }  # fmt: skip
    argv = [str(YAML), "--noprogressbar"] + [x for k, v in options.items() for x in (f"--{k}", v)]
    recipe = ROOT / "recipes" / "ESC50" / "interpret" / "train_lmac.py"
    proc = subprocess.run(
        [sys.executable, str(launcher), str(recipe), *map(str, argv)],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    expected = -signal.SIGKILL if "KILL_EPOCH" in env else 0
    assert proc.returncode == expected, (proc.stdout + proc.stderr)[-3000:]


def test_killed_and_resumed_lmac_equals_uninterrupted(
    tmp_path, tiny_esc50, long_wham, classifier_ckpt
):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    args = (tiny_esc50, long_wham, classifier_ckpt)
    run_lmac(tmp_path, reference, *args)
    run_lmac(tmp_path, resumed, *args, KILL_EPOCH="2", KILL_BATCH="3")
    assert not (resumed / "test_metrics.json").exists()
    run_lmac(tmp_path, resumed, *args)
    a = torch.load(reference / "save" / "psi_model.ckpt", weights_only=True)
    b = torch.load(resumed / "save" / "psi_model.ckpt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("test_metrics.json", "clean/test_metrics.json"):
        assert (reference / name).read_text() == (resumed / name).read_text(), name
