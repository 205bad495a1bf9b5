"""Killed runs: a run killed with SIGKILL (mid-epoch, or in the middle of saving a checkpoint)
and rerun ends bit-identical to an uninterrupted run (same seed, CPU, 1 thread).

Every training run here is a real subprocess. ``_launch.py`` (written under ``tmp_path``) runs
a recipe's ``main`` after installing one hook chosen by environment variables; the hook sends
SIGKILL to its own process at a precise point: a training batch of a given epoch
(``KILL_EPOCH`` / ``KILL_BATCH``), or a point of the checkpoint save of a given epoch
(``KILL_SAVE_EPOCH`` / ``KILL_SAVE_AT``: ``params`` after the first parameter file,
``truncated`` while a parameter file is half written, ``before_rename`` when every file is
written but the folder is not renamed into place yet).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import load_script

from audio_interpretability.checkpointing import Checkpointer, apply_umask
from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.heads import LinearHead

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 5

LAUNCHER = r"""
import importlib.util, os, signal, sys

import torch

import audio_interpretability.checkpointing as ckpt_mod

os.umask(0o022)  # the files a run writes must then be 0644 (tests check)
recipe_path, argv = sys.argv[1], sys.argv[2:]
brain_module, brain_class = os.environ["BRAIN"].split(":")
module = importlib.import_module(brain_module)
Brain = getattr(module, brain_class)


def kill():
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if "KILL_EPOCH" in os.environ:
    epoch, batch = int(os.environ["KILL_EPOCH"]), int(os.environ["KILL_BATCH"])
    original = Brain.compute_objectives
    calls = {}

    def compute_objectives(self, predictions, batch_, stage):
        loss = original(self, predictions, batch_, stage)
        current = self.hparams.epoch_counter.current
        if str(stage) == "Stage.TRAIN" and current == epoch:
            calls[current] = calls.get(current, 0) + 1
            if calls[current] == batch:
                kill()
        return loss

    Brain.compute_objectives = compute_objectives

if "KILL_SAVE_AT" in os.environ:
    at, save_epoch = os.environ["KILL_SAVE_AT"], int(os.environ["KILL_SAVE_EPOCH"])
    state = {"saves": 0, "files": 0}
    original_save = ckpt_mod.Checkpointer.save_checkpoint

    def save_checkpoint(self, *args, **kwargs):
        state["saves"] += 1
        state["files"] = 0
        return original_save(self, *args, **kwargs)

    ckpt_mod.Checkpointer.save_checkpoint = save_checkpoint
    torch_save = torch.save

    def saving(obj, path, *args, **kwargs):
        if state["saves"] == save_epoch and at == "truncated":
            torch_save(obj, path, *args, **kwargs)
            size = os.path.getsize(path)
            os.truncate(path, size // 2)
            kill()
        torch_save(obj, path, *args, **kwargs)
        state["files"] += 1
        if state["saves"] == save_epoch and at == "params" and state["files"] == 1:
            kill()

    torch.save = saving
    fsync_tree = ckpt_mod._fsync_tree

    def before_rename(folder):
        fsync_tree(folder)
        if state["saves"] == save_epoch and at == "before_rename":
            kill()

    ckpt_mod._fsync_tree = before_rename

spec = importlib.util.spec_from_file_location("recipe", recipe_path)
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)
recipe.main(argv)
"""


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> dict:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("classifier")
    return export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, N_CLASSES), folder)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("launcher") / "_launch.py"
    path.write_text(LAUNCHER)
    return path


def lmac_args(data, out, clf, wham) -> tuple[str, str, list[str]]:
    options = {
        "data_folder": data,
        "output_folder": out,
        "embedding_model_path": clf["embedding_model"],
        "classifier_model_path": clf["classifier"],
        "base_channels": 2,
        "emb_dim": 64,
        "decoder_width": 16,
        "out_n_neurons": N_CLASSES,
        "train_fold_nums": "[1, 2]",
        "batch_size": 4,
        "number_of_epochs": 2,
        "num_threads": 1,
        "save_interpretations": False,
        "device": "cpu",
        "add_wham_noise": True,
        "wham_folder": wham,
    }
    argv = [str(ROOT / "hparams" / "lmac_cnn14.yaml"), "--noprogressbar"]
    argv += [x for k, v in options.items() for x in (f"--{k}", str(v))]
    recipe = str(ROOT / "recipes" / "ESC50" / "interpret" / "train_lmac.py")
    return recipe, "audio_interpretability.brains.lmac:LMAC", argv


def classifier_args(data, out, wham) -> tuple[str, str, list[str]]:
    argv = [
        str(ROOT / "hparams" / "classifier_cnn14.yaml"),
        "--data_folder", str(data),
        "--output_folder", str(out),
        "--pretrained_folder", str(out / "pretrained"),
        "--out_n_neurons", str(N_CLASSES),
        "--number_of_epochs", "2",
        "--batch_size", "4",
        "--base_channels", "2", "--emb_dim", "16", "--n_mels", "32",
        "--num_threads", "1",
        "--device", "cpu",
        "--noprogressbar",
    ]  # fmt: skip
    if wham:
        argv += ["--add_wham_noise", "True", "--wham_folder", str(wham)]
    recipe = str(ROOT / "recipes" / "ESC50" / "classification" / "train.py")
    return recipe, "audio_interpretability.brains.classifier:ClassifierBrain", argv


def run(launcher, spec, expect_kill=False, **env) -> str:
    """Run the recipe in a subprocess; return its log (stdout + stderr)."""
    recipe, brain, argv = spec
    environ = {**os.environ, "BRAIN": brain, "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(
        [sys.executable, str(launcher), recipe, *argv],
        env=environ,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, log[-3000:]
    else:
        assert proc.returncode == 0, log[-3000:]
    return log


def newest_checkpoint(save: Path) -> Path:
    """The newest complete checkpoint (the tests' planted broken ones are dated 2099)."""
    ckpts = [p for p in save.glob("CKPT+*") if (p / "CKPT.yaml").exists() and "2099" not in p.name]
    return max(ckpts, key=lambda p: yaml.safe_load((p / "CKPT.yaml").read_text())["unixtime"])


def same(a, b) -> bool:
    """Bit-identical nested state (tensors, dicts, lists, tuples, plain values)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def assert_same_state(a: Path, b: Path) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert isinstance(sa, dict) and sa.keys() == sb.keys()
    for key in sa:
        assert same(sa[key], sb[key]), f"{a.name}: {key} differs"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def other_interpreter_args(name, data, out, clf, wham, nmf_path) -> tuple[str, str, list[str]]:
    """PIQ (on CNN14) or L2I at tiny size, with WHAM! noise: the other trainable interpreters
    on the shared life cycle (``TrainableInterpreterBrain``)."""
    options = {
        "data_folder": data,
        "output_folder": out,
        "embedding_model_path": clf["embedding_model"],
        "classifier_model_path": clf["classifier"],
        "base_channels": 2,
        "emb_dim": 64,
        "out_n_neurons": N_CLASSES,
        "train_fold_nums": "[1, 2]",
        "batch_size": 4,
        "number_of_epochs": 2,
        "num_threads": 1,
        "save_interpretations": False,
        "device": "cpu",
        "add_wham_noise": True,
        "wham_folder": wham,
    }
    if name == "piq":
        options.update(K=16)
        yaml_name, brain, script = "piq_cnn14.yaml", "piq:PIQ", "train_piq.py"
    else:
        options.update(K=8, theta_frames=87, nmf_decoder_path=nmf_path)
        yaml_name, brain, script = "l2i_cnn14.yaml", "l2i:L2I", "train_l2i.py"
    argv = [str(ROOT / "hparams" / yaml_name), "--noprogressbar"]
    argv += [x for k, v in options.items() for x in (f"--{k}", str(v))]
    recipe = str(ROOT / "recipes" / "ESC50" / "interpret" / script)
    return recipe, f"audio_interpretability.brains.{brain}", argv


@pytest.mark.parametrize("name", ["piq", "l2i"])
def test_other_interpreters_killed_mid_epoch_resume_exactly(
    name, tmp_path, tiny_esc50, tiny_wham, classifier_ckpt, launcher
):
    """Every trainable interpreter, not only L-MAC: killed in epoch 2 and rerun, PIQ and L2I
    end with the same parameters, checkpoint files and metrics as an uninterrupted run."""
    from audio_interpretability.nmf import NMFDecoderAudio

    torch.manual_seed(0)
    nmf_path = tmp_path / "nmf_decoder.ckpt"
    torch.save(NMFDecoderAudio(n_comp=8, n_freq=513).state_dict(), nmf_path)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    args = (name, tiny_esc50)
    run(launcher, other_interpreter_args(*args, reference, classifier_ckpt, tiny_wham, nmf_path))
    spec = other_interpreter_args(*args, resumed, classifier_ckpt, tiny_wham, nmf_path)
    run(launcher, spec, expect_kill=True, KILL_EPOCH="2", KILL_BATCH="2")
    assert not (resumed / "test_metrics.json").exists()
    run(launcher, spec)
    assert_same_state(reference / "save" / "psi_model.ckpt", resumed / "save" / "psi_model.ckpt")
    a, b = newest_checkpoint(reference / "save"), newest_checkpoint(resumed / "save")
    files = sorted(p.name for p in a.glob("*.ckpt"))
    assert files == sorted(p.name for p in b.glob("*.ckpt")) and "rng.ckpt" in files
    for file in files:
        if file.startswith(("dataloader", "counter", "brain")):  # text files
            assert (a / file).read_text() == (b / file).read_text(), file
        else:
            assert_same_state(a / file, b / file)
    assert read_json(reference / "test_metrics.json") == read_json(resumed / "test_metrics.json")


# --------------------------------------------------------------------------------------------
# L-MAC with WHAM! noise
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lmac_reference(tmp_path_factory, tiny_esc50, tiny_wham, classifier_ckpt, launcher):
    out = tmp_path_factory.mktemp("lmac_reference")
    run(launcher, lmac_args(tiny_esc50, out, classifier_ckpt, tiny_wham))
    return out


def assert_lmac_equal(a: Path, b: Path) -> None:
    assert_same_state(a / "save" / "psi_model.ckpt", b / "save" / "psi_model.ckpt")
    for name in ("psi_model.ckpt", "optimizer.ckpt", "rng.ckpt", "wham_noise.ckpt"):
        assert_same_state(
            newest_checkpoint(a / "save") / name, newest_checkpoint(b / "save") / name
        )
    assert read_json(a / "test_metrics.json") == read_json(b / "test_metrics.json")
    assert read_json(a / "clean" / "test_metrics.json") == read_json(
        b / "clean" / "test_metrics.json"
    )


def test_lmac_killed_mid_epoch_resumes_exactly(
    tmp_path, tiny_esc50, tiny_wham, classifier_ckpt, launcher, lmac_reference
):
    spec = lmac_args(tiny_esc50, tmp_path, classifier_ckpt, tiny_wham)
    run(launcher, spec, expect_kill=True, KILL_EPOCH="2", KILL_BATCH="2")
    assert len(list((tmp_path / "save").glob("CKPT+*"))) == 1  # epoch 1's, complete
    assert not (tmp_path / "test_metrics.json").exists()
    run(launcher, spec)
    assert_lmac_equal(lmac_reference, tmp_path)


def test_lmac_killed_after_an_intra_epoch_checkpoint_resumes_exactly(
    tmp_path, tiny_esc50, tiny_wham, classifier_ckpt, launcher, lmac_reference
):
    """``--ckpt_interval_steps 1``: a checkpoint after every batch; killed in batch 3 of epoch
    2, the rerun resumes at batch 3 (SpeechBrain's SaveableDataLoader position)."""
    recipe, brain, argv = lmac_args(tiny_esc50, tmp_path, classifier_ckpt, tiny_wham)
    spec = (recipe, brain, argv + ["--ckpt_interval_minutes", "0", "--ckpt_interval_steps", "1"])
    run(launcher, spec, expect_kill=True, KILL_EPOCH="2", KILL_BATCH="3")
    intra = [
        p
        for p in (tmp_path / "save").glob("CKPT+*")
        if "brain_intra_epoch_ckpt" in (p / "CKPT.yaml").read_text()
    ]
    assert len(intra) == 1 and (intra[0] / "dataloader-TRAIN.ckpt").read_text().strip() == "2"
    log = run(launcher, spec)
    assert "intra-epoch" in log or str(intra[0]) in log
    assert_lmac_equal(lmac_reference, tmp_path)


@pytest.mark.parametrize("at", ["params", "truncated", "before_rename"])
def test_lmac_killed_while_saving_resumes_from_the_previous_checkpoint(
    tmp_path, tiny_esc50, tiny_wham, classifier_ckpt, launcher, lmac_reference, at
):
    spec = lmac_args(tiny_esc50, tmp_path, classifier_ckpt, tiny_wham)
    run(launcher, spec, expect_kill=True, KILL_SAVE_EPOCH="2", KILL_SAVE_AT=at)
    save = tmp_path / "save"
    staging = [p for p in save.iterdir() if p.name.startswith(".staging+")]
    assert len(staging) == 1 and len(list(save.glob("CKPT+*"))) == 1
    log = run(launcher, spec)
    assert "unfinished checkpoint save" in log and staging[0].name in log
    assert not staging[0].exists()
    assert_lmac_equal(lmac_reference, tmp_path)


@pytest.mark.parametrize("damage", ["truncate_optimizer", "no_meta", "delete_param"])
def test_lmac_broken_newest_checkpoint_is_skipped(
    tmp_path, tiny_esc50, tiny_wham, classifier_ckpt, launcher, lmac_reference, damage
):
    """What SpeechBrain's own (non-atomic) save leaves when killed: the newest checkpoint is
    skipped with a warning naming it, the run resumes from the previous one."""
    spec = lmac_args(tiny_esc50, tmp_path, classifier_ckpt, tiny_wham)
    run(launcher, spec, expect_kill=True, KILL_EPOCH="2", KILL_BATCH="1")
    save = tmp_path / "save"
    (good,) = list(save.glob("CKPT+*"))
    broken = save / "CKPT+2099-01-01+00-00-00+00"
    shutil.copytree(good, broken)
    meta = broken / "CKPT.yaml"
    meta.write_text(meta.read_text().replace("unixtime:", "unixtime: 9999999999.0\nold_unixtime:"))
    if damage == "truncate_optimizer":
        optimizer = broken / "optimizer.ckpt"
        os.truncate(optimizer, optimizer.stat().st_size // 2)
    elif damage == "no_meta":
        meta.unlink()
    else:
        (broken / "psi_model.ckpt").unlink()
    log = run(launcher, spec)
    assert "Skipping checkpoint" in log and str(broken) in log
    assert broken.exists()  # left in place for the user
    assert_lmac_equal(lmac_reference, tmp_path)


def test_no_loadable_checkpoint_names_each_one(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, recoverables={"model": model})
    saved = ckpt.save_checkpoint()
    os.truncate(saved.paramfiles["model"], 10)
    with pytest.raises(RuntimeError, match="new --output_folder") as err:
        Checkpointer(tmp_path, recoverables={"model": model}).recover_if_possible()
    assert str(saved.path) in str(err.value) and "truncated" in str(err.value)


def test_atomic_save_leaves_no_partial_folder(tmp_path):
    """A save hook that fails leaves only a hidden staging folder, which recovery removes."""
    model = torch.nn.Linear(2, 2)

    def failing(obj, path):
        raise OSError("disk full")

    ckpt = Checkpointer(
        tmp_path, recoverables={"model": model}, custom_save_hooks={"model": failing}
    )
    with pytest.raises(OSError):
        ckpt.save_checkpoint()
    assert not list(tmp_path.glob("CKPT+*")) and ckpt.list_checkpoints() == []
    assert Checkpointer(tmp_path, recoverables={"model": model}).recover_if_possible() is None
    assert not list(tmp_path.iterdir())


def test_custom_name_saved_twice_is_replaced(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, recoverables={"model": model})
    ckpt.save_checkpoint(name="x")
    torch.nn.init.zeros_(model.weight)
    second = ckpt.save_checkpoint(name="x")
    assert [p.name for p in tmp_path.iterdir()] == ["CKPT+x"]
    assert torch.equal(torch.load(second.paramfiles["model"])["weight"], torch.zeros(2, 2))


# --------------------------------------------------------------------------------------------
# The classifier recipe, with and without WHAM! noise
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_wham, intra_epoch", [(False, False), (True, False), (True, True)])
def test_classifier_killed_mid_epoch_resumes_exactly(
    tmp_path, tiny_esc50, tiny_wham, launcher, with_wham, intra_epoch
):
    """The tiny CNN14 has dropout and the training augmentation draws from the global
    generators: the restored global states matter here. ``intra_epoch``: a checkpoint after
    every batch, the rerun resumes at the killed batch."""
    wham = tiny_wham if with_wham else None
    reference, resumed = tmp_path / "a", tmp_path / "b"
    run(launcher, classifier_args(tiny_esc50, reference, wham))
    recipe, brain, argv = classifier_args(tiny_esc50, resumed, wham)
    if intra_epoch:
        argv += ["--ckpt_interval_minutes", "0", "--ckpt_interval_steps", "1"]
    spec = (recipe, brain, argv)
    run(launcher, spec, expect_kill=True, KILL_EPOCH="2", KILL_BATCH="3")
    run(launcher, spec)
    for name in ("embedding_model.ckpt", "classifier.ckpt"):
        assert_same_state(reference / "pretrained" / name, resumed / "pretrained" / name)
    a, b = newest_checkpoint(reference / "save"), newest_checkpoint(resumed / "save")
    for name in ("embedding_model.ckpt", "classifier.ckpt", "optimizer.ckpt", "rng.ckpt"):
        assert_same_state(a / name, b / name)
    metrics = sorted(p.name for p in reference.glob("*.json"))
    assert metrics
    for name in metrics:
        assert read_json(reference / name) == read_json(resumed / name)


# --------------------------------------------------------------------------------------------
# Bad inputs fail at start-up
# --------------------------------------------------------------------------------------------
def load_lmac_recipe():
    return load_script("train_lmac", ROOT / "recipes" / "ESC50" / "interpret" / "train_lmac.py")


def test_missing_wham_test_split_fails_before_training(
    tmp_path, tiny_esc50, tiny_wham, classifier_ckpt
):
    wham = tmp_path / "wham_noise"
    for split in ("tr", "cv"):
        shutil.copytree(Path(tiny_wham) / split, wham / split)
    _, _, argv = lmac_args(tiny_esc50, tmp_path / "out", classifier_ckpt, wham)
    with pytest.raises(FileNotFoundError, match="tt"):
        load_lmac_recipe().main(argv + ["--wham_test_split", "tt"])
    assert not list((tmp_path / "out" / "save").glob("CKPT+*"))
    log = tmp_path / "out" / "train_log.txt"
    assert not log.exists() or "epoch" not in log.read_text()


def test_unwritable_output_folder_fails_at_start(tmp_path, tiny_esc50, tiny_wham, classifier_ckpt):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder cannot be made under a file (root ignores chmod)
    _, _, argv = lmac_args(tiny_esc50, blocker / "out", classifier_ckpt, tiny_wham)
    with pytest.raises(PermissionError, match="--output_folder"):
        load_lmac_recipe().main(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu_says_so(tmp_path, tiny_esc50, tiny_wham, classifier_ckpt):
    _, _, argv = lmac_args(tiny_esc50, tmp_path / "out", classifier_ckpt, tiny_wham)
    with pytest.raises(ValueError, match="no GPU.*--device cpu"):
        load_lmac_recipe().main(argv + ["--device", "cuda"])


# --------------------------------------------------------------------------------------------
# File modes
# --------------------------------------------------------------------------------------------
def test_run_files_follow_the_umask(lmac_reference):
    """Under umask 022 every file of a run (decoder export, checkpoints, label encoder,
    metrics, logs) is 0644, although the atomic writes go through mkstemp (0600)."""
    files = [p for p in lmac_reference.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"psi_model.ckpt", "label_encoder.txt", "test_metrics.json", "rng.ckpt"} <= names
    modes = {str(p.relative_to(lmac_reference)): oct(p.stat().st_mode & 0o777) for p in files}
    assert {k: v for k, v in modes.items() if v != "0o644"} == {}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    from audio_interpretability.viz import _atomic_write

    old = os.umask(umask)
    try:
        path = _atomic_write(tmp_path / "x.png", lambda tmp: Path(tmp).write_bytes(b"png"))
    finally:
        os.umask(old)
    assert (Path(path).stat().st_mode & 0o777) == mode


def test_apply_umask(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    os.chmod(path, 0o600)
    old = os.umask(0o022)
    try:
        apply_umask(path)
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
