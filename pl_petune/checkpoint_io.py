"""Checkpoints that survive a crash at any byte, and resume files checked before they are trusted.

Lightning's :class:`~lightning.pytorch.plugins.io.TorchCheckpointIO` writes a local checkpoint through an fsspec
transaction: a temporary file in the system's temp folder, then a move. When that folder is on another file
system the move is a copy, so a full disk or a kill during it leaves a truncated ``last.ckpt``, and every later
resume crashes on it. :class:`AtomicCheckpointIO` writes into a temporary file beside the target, fsyncs it and
renames it over the target (atomic on POSIX), then fsyncs the folder: a crash leaves the old file or the new one.

:func:`verify_checkpoint` tells an intact checkpoint from a damaged one without unpickling anything (the zip
archive's CRC-32 of every member, then a ``weights_only`` look at its keys); :func:`pick_resume` uses it to choose
the file a run resumes from and sets damaged ones aside.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from pl_petune.errors import PetuneError

# errno values that mean "no room": a full disk, an exhausted quota, a file larger than the file system allows.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# ``--ckpt_path`` values Lightning resolves itself (``last``: the newest checkpoint of the checkpoint callback).
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


class DiskFullError(PetuneError, OSError):
    """A write failed for lack of space; what was on disk before is intact, so a rerun resumes."""


class CorruptCheckpointError(PetuneError, ValueError):
    """A file that is not an intact checkpoint (truncated, damaged, or not a checkpoint at all)."""


def disk_full_message(path: _PATH, err: OSError) -> str:
    """The one line for a write to ``path`` that failed with ``err`` (ENOSPC, EDQUOT, EFBIG)."""
    return (f"disk full writing {path} ({os.strerror(err.errno or errno.ENOSPC)}); the files written before are "
            "intact: free space there (or pass another --run.out_dir) and rerun the same command to resume")


def fsync_dir(path: _PATH) -> None:
    """Make a rename inside folder ``path`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save(obj, path)`` so that a crash at any byte leaves the old ``path`` or the new one.

    Raises:
        DiskFullError: the disk (or quota) is full; the temporary file is removed and ``path`` is untouched.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            raise DiskFullError(disk_full_message(path, err)) from err
        if isinstance(err, RuntimeError) and _is_no_space(err):  # torch's zip writer reports ENOSPC as text
            raise DiskFullError(disk_full_message(path, OSError(errno.ENOSPC, ""))) from err
        raise
    fsync_dir(path.parent)


def _is_no_space(err: BaseException) -> bool:
    text = str(err).lower()
    return "no space left" in text or "disk quota" in text or "file too large" in text


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic (same-folder temp file + fsync + rename).

    Remote paths (``s3://``, ...) are left to Lightning's own writer.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(plugins=[AtomicCheckpointIO()])  # doctest: +SKIP
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or type(get_filesystem(path)).__name__ != "LocalFileSystem":
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


# What a kept checkpoint drops unless asked (--run.keep_optimizer_state): state only training on from it reads.
TRAINING_ONLY_KEYS = ("optimizer_states", "lr_schedulers")
KEPT_MARK = "petune_kept"


def slim_checkpoint(path: _PATH, warn: Any = None) -> bool:
    """Rewrite ``path`` (atomically) without its optimizer and scheduler state; True if it held any.

    What evaluation reads stays: the weights (``state_dict``), the hyper-parameters (to rebuild the module), the
    callbacks' state (``petune test`` restores it), epoch and step. The file is marked ``petune_kept`` so that no
    resume tries to train on from it (:func:`pick_resume` skips it). Only a ``weights_only`` load is used: a file
    holding objects that load refuses is left whole, with one warning line (``warn``, default stderr).
    """
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        (warn or (lambda line: print(line, file=sys.stderr)))(
            f"petune: warning: {path} kept whole, optimizer state included: it holds objects a weights-only load "
            f"refuses ({_short(err)})")
        return False
    dropped = [k for k in TRAINING_ONLY_KEYS if k in state]
    if not dropped:
        return False
    for k in dropped:
        del state[k]
    state[KEPT_MARK] = {"for": "evaluation", "dropped": dropped}
    atomic_torch_save(state, path)
    return True


def resumable(path: _PATH) -> bool:
    """Whether a fit may resume from ``path``: not a kept file reduced by :func:`slim_checkpoint`."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:  # never slimmed: slim_checkpoint reads only what a weights-only load reads
        return True
    return not (isinstance(state, dict) and KEPT_MARK in state)


def verify_checkpoint(path: _PATH) -> None:
    """Raise :class:`CorruptCheckpointError` unless ``path`` is an intact Lightning checkpoint.

    Nothing is unpickled beyond ``torch.load(weights_only=True)``: the zip archive must open and every member's
    CRC-32 must match (a truncated or overwritten file fails here), and, when a ``weights_only`` load can read
    it, it must be a dict holding ``state_dict`` (a saved tensor or config is not a checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpointError(f"{path} is not a file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CorruptCheckpointError(f"{path} is not a torch checkpoint archive ({_short(err)})") from None
    if bad is not None:
        raise CorruptCheckpointError(f"{path} is damaged (member {bad} fails its CRC check)")
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise CorruptCheckpointError(f"{path} is a zip archive but not a torch checkpoint (no data.pkl)")
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return  # holds objects a weights-only load refuses (a callback's own class); the archive itself is whole
    except Exception as err:
        raise CorruptCheckpointError(f"{path} cannot be read as a checkpoint ({_short(err)})") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CorruptCheckpointError(f"{path} is a torch file but not a Lightning checkpoint (no state_dict)")


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:160] if str(err) else type(err).__name__


def set_aside(path: Path) -> Path:
    """Rename a damaged ``path`` to ``<name>.corrupt-<UTC time>`` beside it (kept for inspection, never read)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    fsync_dir(path.parent)
    return target


def pick_resume(ckpt_dir: _PATH, warn: Any = None) -> Optional[Path]:
    """The intact checkpoint of ``ckpt_dir`` a run should resume from, or None to start over.

    ``last.ckpt`` first, then the other ``*.ckpt`` files newest first (a best checkpoint is a full training
    state too, saved at the end of an epoch's validation, so resuming from it replays the later epochs exactly).
    Every damaged file met on the way is renamed by :func:`set_aside`, with one warning line each, so a rerun never
    trips on it again; a kept file without optimizer state (:func:`slim_checkpoint`) is passed over.

    Args:
        ckpt_dir: the run's checkpoint folder (may not exist).
        warn: called with each warning line (default: print to stderr).
    """
    warn = warn or (lambda line: print(line, file=sys.stderr))
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    last = folder / "last.ckpt"
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != "last.ckpt" and p.is_file()),
                    key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for cand in ([last] if last.is_file() else []) + others:
        try:
            verify_checkpoint(cand)
        except CorruptCheckpointError as err:
            moved = set_aside(cand)
            warn(f"petune: warning: {err}; set aside as {moved.name}")
            continue
        if resumable(cand):
            return cand
    return None


__all__ = ["AtomicCheckpointIO", "CorruptCheckpointError", "DiskFullError", "atomic_torch_save",
           "disk_full_message", "pick_resume", "set_aside", "verify_checkpoint", "slim_checkpoint", "resumable",
           "NO_SPACE", "LIGHTNING_CKPT_NAMES", "TRAINING_ONLY_KEYS", "KEPT_MARK"]
