"""Multi-process training and evaluation (``torchrun``, DDP) shared by the Brains.

SpeechBrain 1.1.2 shards only the training set under DDP (a ``DistributedSampler``, which pads
it to a multiple of the world size by repeating clips) and leaves validation and test to every
process on the whole set; it also converts every trained module to ``SyncBatchNorm``, which
only runs on GPUs. :class:`DistributedBrainMixin` changes the three things our recipes need:

* validation and test sets are split into contiguous blocks, one per process, **without
  padding** (:class:`ShardSampler`): every clip is scored exactly once, and the metrics,
  gathered over the processes (:class:`~audio_interpretability.metrics.MetricAccumulator`,
  :class:`~audio_interpretability.metrics.MaskDependence`), equal a single-process run's;
* on CPU (``--distributed_backend gloo``) the trained modules are wrapped in DDP without
  ``SyncBatchNorm`` (each process keeps its own BatchNorm statistics, as PyTorch's CPU DDP does);
* the stage loss is averaged over every process's batches (:meth:`stage_loss_over_processes`),
  so that the logged loss and what the LR schedulers see are the same on every process.

Files are written by rank 0 only (logs, checkpoints, metrics, interpretations: rank 0 holds
the first block of each evaluated set, hence the first clips, as a single process would);
see docs/DISTRIBUTED.md.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import time

import speechbrain as sb
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import IterableDataset, Sampler

logger = logging.getLogger(__name__)

# seconds the exit handler releases the GIL for, after destroying the group (see
# destroy_process_group_at_exit): ample for a worker thread to drop a finished collective
EXIT_GIL_RELEASE_S = 0.1

__all__ = [
    "DistributedBrainMixin",
    "ShardSampler",
    "all_reduce_sum",
    "choose_distributed_backend",
    "destroy_process_group_at_exit",
    "gather_process_states",
    "own_process_state",
    "is_distributed",
    "process_rank",
    "world_size",
]


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(EXIT_GIL_RELEASE_S)


def destroy_process_group_at_exit() -> None:
    """Destroy the process group when the interpreter exits, then let gloo's worker threads
    finish (a no-op without a group); registered once, however often this is called.

    Under torchrun a process could die with SIGABRT ("terminate called without an active
    exception", sometimes SIGSEGV) after every file was written, and torchrun then reported
    the run as failed. The core dump shows why: a gloo worker thread drops the last
    reference to a finished collective (``AsyncBroadcastWork``, e.g. SpeechBrain's
    ``broadcast_object_list`` after ``run_on_main``), whose tensors are Python objects, so it
    must take the GIL; when the main thread has already begun finalising the interpreter,
    taking the GIL ends the worker thread with a forced unwind, which C++ turns into
    ``std::terminate``. The group outlives ``destroy_process_group`` while a
    ``DistributedDataParallel`` module still holds it, so its threads are not joined. The
    handler therefore sleeps ``EXIT_GIL_RELEASE_S`` seconds after destroying the group:
    the main thread releases the GIL while the interpreter is still whole, and a worker
    finishing a collective's teardown takes it then. It covers every collective that has
    completed by exit (the recipes wait for each of theirs). Measured on a 2-process gloo
    script that exits right after ``broadcast_object_list`` with a DDP module alive: 2 of 10
    torchrun runs aborted with the destroy alone, none of 30 with the sleep.
    """
    if dist.is_available() and dist.is_initialized():
        atexit.unregister(_destroy_process_group)  # once, however often this is called
        atexit.register(_destroy_process_group)


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without ``torch.distributed``)."""
    return dist.get_world_size() if is_distributed() else 1


def process_rank() -> int:
    """This process's rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over the processes (``values`` itself without DDP); a collective.

    The reduction runs in float64 on the backend's device (CUDA for NCCL, CPU otherwise); the
    result comes back on ``values``' device and dtype.

    Example
    -------
    >>> all_reduce_sum(torch.tensor([1.0, 2.0]))  # one process: unchanged
    tensor([1., 2.])
    """
    if not is_distributed():
        return values
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    packed = values.detach().to(device, torch.float64).clone()
    dist.all_reduce(packed)
    return packed.to(values.device, values.dtype)


def gather_process_states(state):
    """Every process's ``state`` in rank order under DDP (a collective), else None.

    Recoverables whose state differs per process (the WHAM! noise generator, seeded with
    ``seed + rank``; the global random generators) gather it before a checkpoint is saved:
    SpeechBrain's savers run on rank 0 only, which would otherwise save rank 0's state for
    every process.
    """
    if not is_distributed():
        return None
    states = [None] * world_size()
    dist.all_gather_object(states, state)
    return states


def own_process_state(saved: dict, what: str) -> dict:
    """This process's entry of a state saved with :func:`gather_process_states`
    (``saved["processes"]``); ``saved`` itself when there is none (one process saved it) or
    when the world size changed (with a warning: every process then resumes rank 0's)."""
    states = saved.get("processes")
    if not states or not is_distributed():
        return saved if not states else states[0]
    if len(states) != world_size():
        logger.warning(
            "%s was saved by %d processes, this run has %d: every process resumes rank 0's "
            "state (the processes then draw the same numbers)",
            what,
            len(states),
            world_size(),
        )
        return states[0]
    return states[process_rank()]


def choose_distributed_backend(run_opts):
    """The run options with ``distributed_backend`` fit for the device, under ``torchrun``.

    SpeechBrain's default backend, NCCL, only runs on GPUs: when the processes run on the CPU
    (``--device cpu``, or no ``--device`` on a machine without accelerator) and no
    ``--distributed_backend`` was given, gloo is used. ``--distributed_backend nccl`` given
    with a CPU device is refused with the fix. Outside ``torchrun`` the options are returned
    unchanged.

    Arguments
    ---------
    run_opts : speechbrain.utils.run_opts.RunOptions or dict
        From ``sb.parse_arguments``.

    Returns
    -------
    The run options (a copy when the backend changed).

    Example
    -------
    >>> opts = {"device": "cpu", "distributed_backend": "nccl"}
    >>> choose_distributed_backend(opts) is opts  # not under torchrun: unchanged
    True
    """
    if os.environ.get("RANK") is None or os.environ.get("LOCAL_RANK") is None:
        return run_opts
    device = run_opts.get("device") or sb.utils.distributed.infer_device()
    if torch.device(device).type != "cpu" or run_opts.get("distributed_backend") != "nccl":
        return run_opts
    if "distributed_backend" in (run_opts.get("overridden_args") or ()):
        raise ValueError(
            f"--distributed_backend nccl needs GPUs but the device is {device}; pass "
            "--distributed_backend gloo (or leave it out: gloo is chosen on the CPU)"
        )
    logger.info("Device %s under torchrun: using the gloo backend (NCCL needs GPUs)", device)
    if isinstance(run_opts, dict):
        return {**run_opts, "distributed_backend": "gloo"}
    return dataclasses.replace(run_opts, distributed_backend="gloo")


class ShardSampler(Sampler):
    """This process's contiguous block of ``range(len(dataset))``, in order, without padding.

    Process ``r`` of ``W`` gets ``[r * n // W, (r + 1) * n // W)``: the blocks cover every
    index exactly once (``DistributedSampler`` instead repeats indices so that every process
    gets as many, which counts those clips twice in the metrics). Rank 0 holds the first
    indices, so the interpretations it saves are those of the first clips.

    Arguments
    ---------
    dataset : Sized
        The evaluated set (only its length is read).
    rank, num_replicas : int, optional
        This process's rank and the number of processes (default: the process group's).

    Example
    -------
    >>> [list(ShardSampler(range(5), rank=r, num_replicas=2)) for r in range(2)]
    [[0, 1], [2, 3, 4]]
    >>> ShardSampler(range(5), rank=1, num_replicas=2).offset
    2
    """

    def __init__(self, dataset, rank: int | None = None, num_replicas: int | None = None):
        self.num_replicas = world_size() if num_replicas is None else int(num_replicas)
        self.rank = process_rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        n = len(dataset)
        #: Index of this process's first item in the dataset.
        self.offset = self.rank * n // self.num_replicas
        self.end = (self.rank + 1) * n // self.num_replicas

    def __iter__(self):
        return iter(range(self.offset, self.end))

    def __len__(self) -> int:
        return self.end - self.offset


def pin_memory_on_cuda(device: str, loader_kwargs: dict) -> dict:
    """DataLoader options with ``pin_memory=True`` on a CUDA device (unless the caller set it):
    batches are then copied to the GPU from page-locked memory.

    Example
    -------
    >>> pin_memory_on_cuda("cuda:0", {"batch_size": 2})
    {'batch_size': 2, 'pin_memory': True}
    >>> pin_memory_on_cuda("cpu", {"batch_size": 2})
    {'batch_size': 2}
    >>> pin_memory_on_cuda("cuda", {"pin_memory": False})
    {'pin_memory': False}
    """
    if torch.device(device).type == "cuda" and "pin_memory" not in loader_kwargs:
        return dict(loader_kwargs, pin_memory=True)
    return dict(loader_kwargs)


class DistributedBrainMixin:
    """What an ``sb.Brain`` needs to train and evaluate under ``torchrun`` (module docstring).
    Its DataLoaders also pin memory on CUDA (:func:`pin_memory_on_cuda`).

    Put it before ``sb.Brain`` in the bases (``class ClassifierBrain(DistributedBrainMixin,
    sb.Brain)``) and pass the stage loss through :meth:`stage_loss_over_processes` in
    ``on_stage_end`` (every process calls it). Without DDP nothing changes.
    """

    _loss_steps: int = 0

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """As SpeechBrain's; under DDP validation / test sets get a :class:`ShardSampler`
        (unless the caller gave a sampler); on CUDA ``pin_memory`` is on by default."""
        loader_kwargs = pin_memory_on_cuda(self.device, loader_kwargs)
        if (
            stage != sb.Stage.TRAIN
            and self.distributed_launch
            and is_distributed()
            and loader_kwargs.get("sampler") is None
            and loader_kwargs.get("batch_sampler") is None
            and not isinstance(dataset, IterableDataset)
        ):
            loader_kwargs = dict(loader_kwargs, sampler=ShardSampler(dataset), shuffle=False)
        return super().make_dataloader(dataset, stage, ckpt_prefix=ckpt_prefix, **loader_kwargs)

    def _wrap_distributed(self):
        """As SpeechBrain's, except on CPU: DDP without ``SyncBatchNorm`` (GPU-only)."""
        if not self.distributed_launch or torch.device(self.device).type != "cpu":
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = DistributedDataParallel(
                    module, device_ids=None, find_unused_parameters=self.find_unused_parameters
                )

    def update_average(self, loss, avg_loss):
        """As SpeechBrain's; remembers how many batches the stage's average covers."""
        self._loss_steps = self.step
        return super().update_average(loss, avg_loss)

    def stage_loss_over_processes(self, stage_loss) -> float:
        """The stage's mean batch loss over every process's batches (a collective under DDP;
        a process without batches counts for none). Without DDP: ``float(stage_loss)``."""
        steps, self._loss_steps = self._loss_steps, 0
        if not is_distributed():
            return float(stage_loss)
        total, count = all_reduce_sum(
            torch.tensor([float(stage_loss) * steps, float(steps)], dtype=torch.float64)
        ).tolist()
        return total / count if count else math.nan
