"""The recipes under ``torchrun`` (2 CPU processes, gloo): classifier, L-MAC, evaluation.

Each recipe runs as ``python -m torch.distributed.run --nproc_per_node 2 ...
--distributed_backend gloo`` (the classifier without ``--distributed_backend``: gloo is chosen
on the CPU) on a tiny synthetic set with an odd number of clips per fold (5 classes x 1 clip:
the validation and test folds hold 5 clips, which 2 processes cannot split evenly). Checked:

* **evaluation** (``eval.py``): ``test_metrics.json`` under torchrun equals the single-process
  run on the same clips and checkpoints: every clip is scored exactly once (``n_samples`` 5;
  SpeechBrain's ``DistributedSampler`` would pad 5 clips to 6 and score one twice) and the
  metrics are gathered over both processes. The chance baselines (``random_*``, ``swap_*``)
  are left out of the comparison: their random masks and swap partners are drawn per process
  and batch, so another split of the clips draws others (they are only checked to be finite);
* **training** (classifier, L-MAC): the run finishes, writes what a single process writes, and
  its metrics are finite. Equality with single-process training is not expected: each process
  trains on its half of every epoch (the gradients averaged over the two), SpeechBrain's
  ``DistributedSampler`` shuffles and pads the training set otherwise than the single-process
  sampler, the WHAM! noise is drawn from a generator seeded per rank (``seed + rank``), and on
  CPU each process keeps its own BatchNorm statistics;
* **rank 0 writes**: the files of a torchrun run are those of a single-process run (no file
  twice, none per rank, no staging / temporary file left), ``train_log.txt`` holds each line
  once, the interpretation WAV / PNG files are written once (those of the first clips).

About 1.5 minutes on a 2-core CPU (the two processes share the cores, one thread each).
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import speechbrain as sb
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from audio_interpretability.distributed import (
    ShardSampler,
    all_reduce_sum,
    choose_distributed_backend,
)
from audio_interpretability.metrics import MaskDependence

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "ESC50"
N_CLASSES = 5
N_TEST = 5  # clips per fold: odd, so that 2 processes cannot split it evenly
TINY = ["--base_channels", "2", "--emb_dim", "64", "--num_threads", "1", "--device", "cpu"]
BASELINES = ("random_", "swap_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(script: Path, argv: list[str], processes: int = 1, backend: str | None = "gloo") -> str:
    """Run a recipe (``processes`` > 1: under torchrun, with ``--distributed_backend
    backend`` unless None); return its log."""
    if processes > 1:
        launch = [
            "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        ]  # fmt: skip
        if backend:
            argv = [*argv, "--distributed_backend", backend]
    else:
        launch = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *launch, str(script), *argv, "--noprogressbar"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def files(folder: Path) -> set[str]:
    """Every file under ``folder``, relative, checkpoint folders' dates replaced by ``CKPT``."""
    out = set()
    for path in folder.rglob("*"):
        if path.is_file():
            parts = ["CKPT" if p.startswith("CKPT+") else p for p in path.relative_to(folder).parts]
            out.add("/".join(parts))
    return out


def assert_written_once(folder: Path) -> None:
    """No hidden (staging, temporary) file, no per-rank file, each train_log line once."""
    names = files(folder)
    assert not [n for n in names if any(p.startswith(".") for p in n.split("/"))], names
    assert not [n for n in names if "rank" in n.lower()], names
    for log in folder.rglob("train_log.txt"):
        lines = log.read_text().splitlines()
        assert len(lines) == len(set(lines)), lines
    log_lines = (folder / "log.txt").read_text().splitlines()
    assert sum("Beginning experiment!" in line for line in log_lines) == 1


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def assert_finite(metrics: dict) -> None:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    assert not bad, bad


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    from audio_interpretability.data.synthetic import generate_synthetic_esc50, generate_wham_noise

    root = tmp_path_factory.mktemp("ddp_data")
    generate_synthetic_esc50(
        str(root / "esc50"), n_classes=N_CLASSES, clips_per_class_per_fold=1, duration=1.0,
        sample_rate=16000, seed=0,
    )  # fmt: skip
    wham = root / "wham" / "wham_noise"
    generate_wham_noise(
        str(wham), n_files=(4, 2, 2), sample_rate=16000, min_duration=0.5, max_duration=3.0, seed=0
    )
    return root / "esc50", wham


@pytest.fixture(scope="module")
def classifier(data, tmp_path_factory) -> Path:
    """The classifier recipe under torchrun (1 epoch, WHAM! noise); returns its folder."""
    esc50, wham = data
    out = tmp_path_factory.mktemp("ddp_classifier")
    argv = [
        str(ROOT / "hparams" / "classifier_cnn14.yaml"),
        "--data_folder", str(esc50), "--output_folder", str(out / "exp"),
        "--pretrained_folder", str(out / "pretrained"), "--out_n_neurons", str(N_CLASSES),
        "--number_of_epochs", "1", "--batch_size", "4", *TINY,
        "--add_wham_noise", "True", "--wham_folder", str(wham),
    ]  # fmt: skip
    # no --distributed_backend: gloo is chosen for the CPU (SpeechBrain's default is NCCL)
    run(RECIPES / "classification" / "train.py", argv, processes=2, backend=None)
    return out


def lmac_argv(esc50: Path, classifier: Path, out: Path, batch_size: int) -> list[str]:
    return [
        str(ROOT / "hparams" / "lmac_cnn14.yaml"),
        "--data_folder", str(esc50), "--output_folder", str(out),
        "--embedding_model_path", str(classifier / "pretrained" / "embedding_model.ckpt"),
        "--classifier_model_path", str(classifier / "pretrained" / "classifier.ckpt"),
        "--decoder_width", "16", "--out_n_neurons", str(N_CLASSES),
        "--batch_size", str(batch_size), "--n_saved_interpretations", "2", *TINY,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lmac(data, classifier, tmp_path_factory) -> Path:
    """L-MAC training under torchrun (1 epoch, WHAM! noise); returns its output folder."""
    esc50, wham = data
    out = tmp_path_factory.mktemp("ddp_lmac") / "exp"
    argv = lmac_argv(esc50, classifier, out, batch_size=4) + [
        "--number_of_epochs", "1", "--add_wham_noise", "True", "--wham_folder", str(wham),
    ]  # fmt: skip
    run(RECIPES / "interpret" / "train_lmac.py", argv, processes=2)
    return out


def test_classifier_trains_under_torchrun(classifier):
    exp = classifier / "exp"
    assert_written_once(exp)
    names = files(exp)
    expected = {
        "test_metrics.json", "confusion_matrix.png", "train_log.txt", "log.txt",
        "hyperparams.yaml", "save/label_encoder.txt", "save/CKPT/CKPT.yaml",
        "save/CKPT/embedding_model.ckpt", "save/CKPT/classifier.ckpt",
    }  # fmt: skip
    assert expected <= names
    assert len(list((exp / "save").glob("CKPT+*"))) == 1  # 1 epoch: one checkpoint
    assert sorted(os.listdir(classifier / "pretrained")) == [
        "classifier.ckpt", "classifier_hparams.yaml", "embedding_model.ckpt", "label_encoder.txt",
    ]  # fmt: skip
    metrics = read_json(exp / "test_metrics.json")
    # every test clip counted once (gathered from both processes, no padded duplicate)
    assert metrics["n_samples"] == N_TEST == sum(map(sum, metrics["confusion_matrix"]))
    assert_finite(metrics)
    lines = (exp / "train_log.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch: 1") and "test loss" in lines[1]


def test_lmac_trains_under_torchrun(lmac):
    assert_written_once(lmac)
    names = files(lmac)
    expected = {
        "test_metrics.json", "clean/test_metrics.json", "train_log.txt", "log.txt",
        "save/psi_model.ckpt", "save/CKPT/psi_model.ckpt", "save/CKPT/wham_noise.ckpt",
        "save/CKPT/optimizer.ckpt", "save/label_encoder.txt",
    }  # fmt: skip
    assert expected <= names
    for setting in (lmac, lmac / "clean"):
        metrics = read_json(setting / "test_metrics.json")
        assert metrics["n_samples"] == N_TEST
        assert_finite(metrics)
        # n_saved_interpretations 2: two clips, each written once (by rank 0)
        saved = sorted(os.listdir(setting / "interpretations"))
        assert len(saved) == 2
        for name in saved:
            assert sorted(os.listdir(setting / "interpretations" / name)) == [
                f"{name}.png", "interpretation.wav", "original.wav",
            ]  # fmt: skip
    assert len((lmac / "train_log.txt").read_text().splitlines()) == 3  # epoch, 2 test lines


def test_eval_under_torchrun_equals_single_process(data, classifier, lmac, tmp_path):
    esc50, _ = data

    # batch 2 and the shards [0, 1] / [2, 3, 4] of the 5 clips give the same batches as one
    # process ([0, 1], [2, 3], [4]): the mean batch loss is then the same too.
    def argv(out: Path) -> list[str]:
        psi = lmac / "save" / "psi_model.ckpt"
        return lmac_argv(esc50, classifier, out, batch_size=2) + [
            "--pretrained_interpreter",
            str(psi),
        ]

    script = RECIPES / "interpret" / "eval.py"
    run(script, argv(tmp_path / "single"))
    run(script, argv(tmp_path / "ddp"), processes=2)
    single, ddp = tmp_path / "single", tmp_path / "ddp"

    assert files(ddp) == files(single)  # the same files, each written once
    assert_written_once(ddp)
    for name in ("train_log.txt", "log.txt"):  # no line written by rank 1
        assert len((ddp / name).read_text().splitlines()) == len(
            (single / name).read_text().splitlines()
        )
    for path in sorted(single.rglob("test_metrics.json")):
        one = read_json(path)
        two = read_json(ddp / path.relative_to(single))
        assert one["n_samples"] == two["n_samples"] == N_TEST
        assert set(one) == set(two)
        assert_finite(two)
        compared = {k for k in one if not k.startswith(BASELINES)}
        assert {"accuracy", "AD", "FF", "fid_in", "SPS", "loc_iou", "mask_input_dependence"} <= (
            compared
        )
        for key in sorted(compared):
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key


# --------------------------------------------------------------------------------------------
# The pieces, without a recipe
# --------------------------------------------------------------------------------------------
def test_shard_sampler_covers_every_index_once():
    for n in range(0, 12):
        for world in (1, 2, 3, 4):
            shards = [
                list(ShardSampler(range(n), rank=r, num_replicas=world)) for r in range(world)
            ]
            assert sum(shards, []) == list(range(n))  # contiguous, in order, no padding
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="rank 2"):
        ShardSampler(range(3), rank=2, num_replicas=2)


def test_dataloaders_pin_memory_on_cuda(tmp_path):
    """Every Brain's DataLoader pins memory when the Brain runs on CUDA (not on the CPU), unless
    the YAML's loader options say otherwise. The device is set after construction, since this
    machine may have no GPU: only the loader options are checked."""
    from speechbrain.dataio.dataset import DynamicItemDataset

    from audio_interpretability.distributed import DistributedBrainMixin

    class Tiny(DistributedBrainMixin, sb.Brain):
        pass

    data = DynamicItemDataset({f"c{i}": {"x": float(i)} for i in range(4)})
    data.set_output_keys(["id", "x"])
    brain = Tiny(modules={}, run_opts={"device": "cpu"})
    assert not brain.make_dataloader(data, sb.Stage.TEST, batch_size=2).pin_memory
    brain.device = "cuda:0"
    assert brain.make_dataloader(data, sb.Stage.TEST, batch_size=2).pin_memory
    loader = brain.make_dataloader(data, sb.Stage.TEST, batch_size=2, pin_memory=False)
    assert not loader.pin_memory


def test_gloo_is_chosen_on_the_cpu(monkeypatch):
    opts = sb.parse_arguments(["h.yaml", "--device", "cpu"])[1]
    assert choose_distributed_backend(opts) is opts  # not under torchrun
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert choose_distributed_backend(opts)["distributed_backend"] == "gloo"
    given = sb.parse_arguments(["h.yaml", "--device", "cpu", "--distributed_backend", "nccl"])[1]
    with pytest.raises(ValueError, match="--distributed_backend gloo"):
        choose_distributed_backend(given)
    mpi = sb.parse_arguments(["h.yaml", "--device", "cpu", "--distributed_backend", "mpi"])[1]
    assert choose_distributed_backend(mpi) is mpi


def test_process_group_is_destroyed_at_exit(tmp_path):
    """The recipes' atexit handler destroys the process group before Python is torn down
    (a gloo group alive at finalisation can abort the process: SIGABRT under torchrun)."""
    script = f"""
import atexit
import torch.distributed as dist
from audio_interpretability.distributed import destroy_process_group_at_exit
destroy_process_group_at_exit()  # no group yet: nothing registered
atexit.register(lambda: print("group alive at exit:", dist.is_initialized()))
dist.init_process_group("gloo", init_method="file://{tmp_path / "init"}", rank=0, world_size=1)
destroy_process_group_at_exit()
destroy_process_group_at_exit()  # registered once
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "group alive at exit: False" in proc.stdout  # atexit runs last-in first-out


EXIT_AFTER_BROADCAST = """
import torch
import torch.distributed as dist
from audio_interpretability.distributed import destroy_process_group_at_exit
dist.init_process_group("gloo")
destroy_process_group_at_exit()
ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))  # holds the group
for i in range(3):
    dist.broadcast_object_list([i], src=0)  # as run_on_main does; then the process exits
"""


def test_exit_right_after_a_collective_under_torchrun(tmp_path):
    """A process that exits right after a collective, with a DDP module still holding the
    group, exits cleanly: without the exit handler's GIL release, a gloo worker dropping the
    broadcast's tensors aborted 2 of 10 such torchrun runs (SIGABRT, "terminate called
    without an active exception"); three runs catch that with probability 0.49."""
    script = tmp_path / "exit_after_broadcast.py"
    script.write_text(EXIT_AFTER_BROADCAST)
    for _ in range(3):
        run(script, [], processes=2, backend=None)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dep = MaskDependence()
        if rank == 0:  # rank 1 holds no mask (more processes than clips)
            dep.update(torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]]))
        total = all_reduce_sum(torch.tensor([1.0 + rank]))
        result = {"dependence": dep.summarize(), "total": float(total)}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_reductions_across_processes(tmp_path):
    mp.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    for rank in range(2):
        result = read_json(tmp_path / f"rank{rank}.json")
        # the two masks of rank 0 (hand-computed in test_metrics.py): 2/3; 1 + 2 = 3
        assert result == {"dependence": pytest.approx(2 / 3), "total": 3.0}


def _resume_worker(rank: int, world: int, init_file: str, folder: str, wham: str) -> None:
    from audio_interpretability.checkpointing import Checkpointer, register_random_states
    from audio_interpretability.data.wham import WhamNoise

    os.environ["RANK"] = str(rank)  # SpeechBrain's rank-0 checks read it
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same global seed on every process, as the YAMLs set it
        noise = WhamNoise(wham, sample_rate=16000, split="tr", seed=rank)  # seed + rank
        ckpt = Checkpointer(os.path.join(folder, "save"))
        register_random_states(ckpt, noise)
        torch.rand(rank + 1)  # the processes' global generators drift apart
        ckpt.save_checkpoint(meta={"epoch": 1.0})
        expected = (noise.sample(1, 100), torch.rand(3))
        noise.sample(4, 100), torch.rand(5)  # a run killed here, then resumed:
        ckpt.recover_if_possible()
        resumed = (noise.sample(1, 100), torch.rand(3))
        result = {
            "same": all(torch.equal(a, b) for a, b in zip(expected, resumed)),
            "noise": resumed[0].tolist(),
        }
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_each_process_resumes_its_own_random_state(tmp_path, tiny_wham):
    """Rank 0 saves the checkpoint, but each process resumes its own WHAM! and global
    generators (they would otherwise all resume rank 0's and draw the same noise)."""
    mp.start_processes(
        _resume_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), tiny_wham),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    results = [read_json(tmp_path / f"rank{rank}.json") for rank in range(2)]
    assert all(r["same"] for r in results)
    assert results[0]["noise"] != results[1]["noise"]
    (saved,) = (tmp_path / "save").glob("CKPT+*")
    assert len(torch.load(saved / "wham_noise.ckpt", weights_only=True)["processes"]) == 2
