"""Training checkpoints: atomic writes, keep-last-K, and finding the newest one that loads.

A checkpoint is ``ckpt-{step:08d}.pt`` in the run's ``checkpoints/`` folder: one ``torch.save`` of plain containers
and tensors, so it loads with ``torch.load(weights_only=True)`` and nothing in it is ever executed. Each file is first
written to a hidden temporary name in the same folder, flushed and fsync'ed, then renamed over its final name with
``os.replace`` (atomic on POSIX), and the folder is fsync'ed. A process killed mid-write therefore leaves a stray
temporary file (removed by the next :func:`save_checkpoint` or :func:`clean_temporary_files`) but never a truncated
checkpoint. The text file ``latest`` names the newest checkpoint (replaced the same way, for people and tools).
Resuming scans the finished files newest step first and falls back to an older one when a file does not load (or
lacks the model), so it never depends on the pointer having been updated before a crash.

Pruning (``keep_last``) only removes checkpoints of steps before the one just written: the new file is never
deleted, and files of later steps (another run's, or a damaged leftover) are left for resuming to judge, so ``latest``
always names a file that exists. Whether a fresh run may start in a folder holding checkpoints is decided in
:mod:`equiav.training.resume`.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

LATEST_FILE = "latest"
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")
_TMP_PREFIX = ".tmp-"

log = logging.getLogger(__name__)


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, make it durable, then rename it to ``path``."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every finished checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def clean_temporary_files(directory: str | Path) -> list[Path]:
    """Delete temporary files left by writes that were killed; returns what was removed."""
    directory = Path(directory)
    removed = [p for p in directory.glob(f"{_TMP_PREFIX}*") if p.is_file()] if directory.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def save_checkpoint(
    directory: str | Path, step: int, state: dict[str, Any], keep_last: int | None = None
) -> Path:
    """Atomically write ``state`` as the checkpoint of ``step``, point ``latest`` at it and keep the newest ``keep_last``.

    ``keep_last=None`` keeps every checkpoint. Only one process (rank 0) should call this.
    """
    if keep_last is not None and keep_last < 1:
        raise CheckpointError(f"keep_last must be at least 1 or None, got {keep_last}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clean_temporary_files(directory)
    path = directory / checkpoint_name(step)
    _atomic_write(path, lambda handle: torch.save(state, handle))
    _atomic_write(directory / LATEST_FILE, lambda handle: handle.write(f"{path.name}\n".encode()))
    if keep_last is not None:
        prune_checkpoints(directory, step, keep_last)
    return path


def prune_checkpoints(directory: str | Path, step: int, keep_last: int) -> list[Path]:
    """Delete the oldest checkpoints before ``step`` so that ``keep_last`` remain counting the one of ``step``.

    Checkpoints of ``step`` and later are never touched. Returns the deleted paths.
    """
    older = [path for saved, path in list_checkpoints(directory) if saved < step]
    doomed = older[: max(0, len(older) - (keep_last - 1))]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint with ``weights_only=True``; any failure becomes a :class:`CheckpointError` naming the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged file can fail in many ways (pickle, zip, OS)
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint (expected a dict with a 'step' entry)")
    return state


def check_entries(state: dict[str, Any], path: str | Path, required: tuple[str, ...]) -> None:
    """Raise :class:`CheckpointError` naming the file and the missing entries unless ``state`` holds ``required``."""
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks the entries {missing}")


def find_latest_checkpoint(
    directory: str | Path,
    map_location: str | torch.device = "cpu",
    required: tuple[str, ...] = ("model",),
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that loads and holds the ``required`` entries, with its state;
    ``None`` when there is none.

    Files that fail to load or lack an entry are skipped with a warning, so a damaged newest checkpoint falls back to
    the previous one.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    for _, path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path, map_location)
            check_entries(state, path, required)
            return path, state
        except CheckpointError as error:
            log.warning("skipping unusable checkpoint: %s", error)
    return None
