"""Checkpoints that survive ``kill -9`` at any instant, and the random state that makes a resumed
run repeat the uninterrupted one.

SpeechBrain's :class:`speechbrain.utils.checkpoints.Checkpointer` writes ``CKPT.yaml`` first and
the parameter files after it, straight into ``CKPT+<time>``: a run killed in between leaves a
folder that looks complete but holds a truncated file, and every rerun then fails to load it
(``PytorchStreamReader failed reading zip archive``) without naming it. :class:`Checkpointer`
(same constructor; YAMLs build it with ``!new:audio_interpretability.checkpointing.Checkpointer``)
changes three things:

* saving writes into a hidden staging folder (``.staging+CKPT+...``, which no listing sees),
  ``fsync`` s every file, and renames the folder into place only when everything is on disk;
* recovery skips a checkpoint that cannot be loaded (a ``CKPT+*`` folder without ``CKPT.yaml``,
  an unreadable ``CKPT.yaml``, a missing, truncated or unreadable parameter file) with a warning
  naming it, and loads the next one in the same order; stale staging folders of killed saves
  are removed with a warning. If no checkpoint can be loaded, the error names each one;
* a data loader registered as a recoverable (SpeechBrain's training loader) gets a private
  ``generator`` when it has none, so that starting an epoch draws nothing from the global
  generator and an intra-epoch checkpoint resumes the global random stream exactly.

:class:`RandomState` is a recoverable holding the global random generators (torch CPU and
CUDA, numpy, python ``random``); the Brains register it (with the WHAM! noise source, whose
private generator is checkpointed by :class:`~audio_interpretability.data.wham.WhamNoise`) so
that a resumed run draws the same numbers as an uninterrupted one. Under DDP both gather every
process's state before rank 0 saves it, and each process resumes its own; :class:`Checkpointer`
returns from a save only once the checkpoint is in place on every process.

:func:`apply_umask` gives a file written through :func:`tempfile.mkstemp` (always mode 0600)
the permissions a plain ``open`` would have given it.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
import os
import pathlib
import random
import shutil
import zipfile

import numpy as np
import torch
import yaml
from speechbrain.utils import checkpoints as sb_checkpoints
from speechbrain.utils.checkpoints import (
    Checkpoint,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from audio_interpretability.distributed import gather_process_states, own_process_state

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging+"
_TORCH_ZIP_MAGIC = b"PK\x03\x04"


def apply_umask(path: str | os.PathLike, mode: int = 0o666) -> None:
    """Set ``path``'s permissions to ``mode`` less the process umask (0644 for umask 022).

    :func:`tempfile.mkstemp` creates files with mode 0600 whatever the umask; call this on the
    temporary file before renaming it into place so that the result is as readable as any
    other file the user writes.

    Example
    -------
    >>> import os, stat, tempfile
    >>> fd, tmp = tempfile.mkstemp(); os.close(fd)
    >>> old = os.umask(0o022); apply_umask(tmp); _ = os.umask(old)
    >>> oct(stat.S_IMODE(os.stat(tmp).st_mode))
    '0o644'
    >>> os.remove(tmp)
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _fsync_path(path: pathlib.Path) -> None:
    """Flush a file or a folder entry to disk (folders: where the OS allows it)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: pathlib.Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync_path(path)
    _fsync_path(folder)


def check_paramfile(path: pathlib.Path) -> None:
    """Raise ``OSError`` / ``ValueError`` when a checkpoint file is missing or visibly cut
    short: a ``torch.save`` file (a zip archive) must have its central directory (written last).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == _TORCH_ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise ValueError(f"{path.name} is truncated or corrupt ({err})") from err


class Checkpointer(sb_checkpoints.Checkpointer):
    """SpeechBrain's checkpointer with atomic saves and recovery that skips broken checkpoints.

    Arguments
    ---------
    As :class:`speechbrain.utils.checkpoints.Checkpointer` (``checkpoints_dir``,
    ``recoverables``, ``custom_load_hooks``, ``custom_save_hooks``, ``allow_partial_load``).

    Example
    -------
    >>> import tempfile
    >>> model = torch.nn.Linear(2, 2)
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), recoverables={"model": model})
    >>> saved = ckpt.save_checkpoint(meta={"loss": 1.0})
    >>> sorted(p.name for p in saved.path.iterdir())
    ['CKPT.yaml', 'model.ckpt']
    >>> ckpt.recover_if_possible().path == saved.path
    True
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._staging: pathlib.Path | None = None
        self._final: pathlib.Path | None = None
        self._broken: dict[pathlib.Path, str] = {}  # path -> reason, warned once each

    def add_recoverable(self, name, obj, *args, **kwargs):
        """As SpeechBrain's. A data loader without a generator gets a private one: torch draws
        each iterator's base seed from the global generator, so the draw made when an epoch
        starts would otherwise land before the state an intra-epoch checkpoint saves, and a
        resumed run would continue the global stream one draw off."""
        super().add_recoverable(name, obj, *args, **kwargs)
        if isinstance(obj, torch.utils.data.DataLoader) and obj.generator is None:
            obj.generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)

    # ------------------------------------------------------------------ saving
    def _new_checkpoint_dirpath(self):
        final = super()._new_checkpoint_dirpath()
        return self._stage(final)

    def _custom_checkpoint_dirpath(self, name):
        return self._stage(super()._custom_checkpoint_dirpath(name))

    def _stage(self, final: pathlib.Path) -> pathlib.Path:
        """Remember where the checkpoint goes; return the hidden folder it is written to."""
        self._final = final
        self._staging = final.with_name(f"{STAGING_PREFIX}{final.name}+{os.getpid()}")
        if self._staging.exists():
            shutil.rmtree(self._staging)
        return self._staging

    def save_checkpoint(self, meta=None, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """Save as SpeechBrain does, into a staging folder renamed into place when complete.

        A process killed at any instant leaves either the complete ``CKPT+...`` folder or
        none (plus a hidden staging folder that the next recovery removes).
        """
        self._staging = None
        for obj in self.recoverables.values():  # per-process states, gathered on every process
            gather = getattr(obj, "gather_process_states", None)
            if gather is not None:
                gather()
        saved = super().save_checkpoint(
            meta=meta or {}, end_of_epoch=end_of_epoch, name=name, verbosity=logging.DEBUG
        )
        ddp_barrier()  # every process has written its files
        checkpoint = self._move_into_place(saved, end_of_epoch, verbosity)
        # Under DDP no process goes on (e.g. to recover the checkpoint just saved, as
        # ``evaluate`` does after ``fit``) before it is in place.
        ddp_barrier()
        return checkpoint

    def _move_into_place(self, saved, end_of_epoch, verbosity) -> Checkpoint | None:
        """Rank 0: rename the staging folder into place (None on the other processes)."""
        if not if_main_process():
            return None
        staging, final = self._staging, self._final
        _fsync_tree(staging)
        trash = None
        if final.exists():  # a custom name saved again: move the old one aside first
            trash = final.with_name(f"{STAGING_PREFIX}old+{final.name}+{os.getpid()}")
            os.replace(final, trash)
        os.replace(staging, final)
        _fsync_path(final.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        self._staging = None
        kind = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logger.log(verbosity, f"Saved an {kind} checkpoint in {final}")
        paramfiles = {k: final / pathlib.Path(p).name for k, p in saved.paramfiles.items()}
        return Checkpoint(final, saved.meta, paramfiles)

    # ------------------------------------------------------------------ listing
    def _warn_broken(self, path: pathlib.Path, reason: str) -> None:
        if path not in self._broken:
            logger.warning(
                "Skipping checkpoint %s: %s. It is left in place; delete it once you no longer "
                "need it.",
                path,
                reason,
            )
        self._broken[path] = reason

    def list_checkpoints(self):
        """As SpeechBrain's, without checkpoints whose ``CKPT.yaml`` cannot be read or which
        failed to load in this process (each named once in a warning)."""
        checkpoints = []
        for ckpt_dir in self._list_checkpoint_dirs():
            if ckpt_dir in self._broken:
                continue
            try:
                checkpoints.extend(self._construct_checkpoint_objects([ckpt_dir]))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
                self._warn_broken(ckpt_dir, f"its {sb_checkpoints.METAFNAME} is unreadable ({err})")
                continue
            if not isinstance(checkpoints[-1].meta, dict):
                checkpoints.pop()
                self._warn_broken(ckpt_dir, f"its {sb_checkpoints.METAFNAME} is not a mapping")
        return checkpoints

    # ------------------------------------------------------------------ recovery
    def _clean_leftovers(self) -> None:
        """Remove staging folders of killed saves; warn about ``CKPT+*`` folders without meta."""
        if not if_main_process():
            return
        for path in sorted(self.checkpoints_dir.iterdir()):
            if path.is_dir() and path.name.startswith(STAGING_PREFIX):
                logger.warning("Removing %s, an unfinished checkpoint save (killed run)", path)
                shutil.rmtree(path, ignore_errors=True)
            elif (
                path.is_dir()
                and path.name.startswith(sb_checkpoints.CKPT_PREFIX)
                and not (path / sb_checkpoints.METAFNAME).exists()
            ):
                self._warn_broken(path, f"it has no {sb_checkpoints.METAFNAME} (unfinished save)")

    def _check_files(self, checkpoint: Checkpoint) -> None:
        """Raise when a recoverable's file is missing or cut short (before loading anything)."""
        for name in self.recoverables:
            path = checkpoint.paramfiles.get(name)
            if path is None:
                if (
                    self.allow_partial_load
                    or "dataloader" in name
                    or self.optional_recoverables.get(name, False)
                ):
                    continue
                raise FileNotFoundError(f"{name}{sb_checkpoints.PARAMFILE_EXT} is missing")
            check_paramfile(pathlib.Path(path))

    def recover_if_possible(
        self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None
    ):
        """Load the first checkpoint, in SpeechBrain's order, that loads completely.

        A checkpoint that fails (see the module docstring) is named in a warning and skipped;
        the next one is loaded over whatever the failed one had loaded.

        Raises
        ------
        RuntimeError
            Checkpoints exist but none of them loads (each is named with its error).
        """
        self._clean_leftovers()
        candidates = self.find_checkpoints(
            importance_key=importance_key,
            max_key=max_key,
            min_key=min_key,
            ckpt_predicate=ckpt_predicate,
        )
        failures = []
        for checkpoint in candidates:
            try:
                self._check_files(checkpoint)
                self.load_checkpoint(checkpoint)
            except Exception as err:  # torch / pickle / zip / yaml / hook errors alike
                reason = f"it does not load ({type(err).__name__}: {err})"
                self._warn_broken(checkpoint.path, reason)
                failures.append(f"{checkpoint.path}: {reason}")
                continue
            if failures:
                logger.warning("Resumed from the older checkpoint %s instead", checkpoint.path)
            return checkpoint
        if failures:
            raise RuntimeError(
                "No checkpoint in "
                f"{self.checkpoints_dir} can be loaded:\n  "
                + "\n  ".join(failures)
                + "\nDelete these folders to start this run from scratch, or pass a new "
                "--output_folder."
            )
        logger.info("Would load a checkpoint here, but none found yet.")
        return None


@register_checkpoint_hooks
class RandomState:
    """Recoverable holding the global random generators: torch (CPU, and CUDA when available),
    numpy, python ``random``.

    Register it on a checkpointer (``checkpointer.add_recoverable("rng", RandomState(),
    optional_load=True)``) so that a resumed run draws what an uninterrupted run would have.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rng.ckpt")
    >>> state = RandomState()
    >>> state._save(path)
    >>> first = (torch.rand(1), np.random.rand(), random.random())
    >>> state._recover(path, end_of_epoch=True)
    >>> (torch.rand(1), np.random.rand(), random.random()) == first
    True
    """

    _processes: list | None = None

    @staticmethod
    def _state() -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global RNG)
        state = {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def gather_process_states(self) -> None:
        """Under DDP, gather every process's generators (before rank 0 saves them)."""
        self._processes = gather_process_states(self._state())

    @mark_as_saver
    def _save(self, path) -> None:
        state = self._state()
        if self._processes is not None:  # under DDP: each process resumes its own
            state["processes"] = self._processes
            self._processes = None
        torch.save(state, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch) -> None:
        del end_of_epoch
        saved = torch.load(path, map_location="cpu", weights_only=True)
        state = own_process_state(saved, "The random state")
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        keys = keys.numpy().astype(np.uint32)
        np.random.set_state((kind, keys, pos, has_gauss, cached))  # noqa: NPY002
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available():
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            else:
                logger.warning(
                    "The checkpoint holds CUDA random states of %d devices, this machine has "
                    "%d: CUDA draws after resuming will differ from an uninterrupted run",
                    len(cuda),
                    torch.cuda.device_count(),
                )


def register_random_states(checkpointer, noise=None) -> None:
    """Add the global random generators (``rng``) and, when given, a noise source with its own
    generator (``wham_noise``) to ``checkpointer``'s recoverables (optional on load, so older
    checkpoints without them still resume)."""
    if checkpointer is None:
        return
    checkpointer.add_recoverable("rng", RandomState(), optional_load=True)
    if noise is not None:
        checkpointer.add_recoverable("wham_noise", noise, optional_load=True)
