"""Resume state: where training stands, what a checkpoint restores, and which checkpoint a run starts from.

A checkpoint holds the model, optimizer, schedule step, gradient scaler, every rank's RNG states and the data position
(epoch, micro-batches done in it). Items are a function of (seed, epoch, index) and the sampler order of (seed,
epoch), so restoring all of it continues a run exactly as if it had not stopped.

A fresh start never silently builds on or deletes another run's checkpoints: when ``checkpoints/`` already holds
checkpoint files (loadable or not), starting over is refused unless ``overwrite`` is set, which moves them (and
``latest``) into ``checkpoints/replaced-<UTC time>/`` and says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from .checkpoint import (
    LATEST_FILE,
    check_entries,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from .distributed import DistributedContext, broadcast_object, gather_objects
from .rng import rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)

RESUME_ENTRIES = ("model", "optimizer", "schedule", "scaler", "position", "rng")


@dataclass
class Position:
    """Where training stands: optimizer steps done, and the epoch and micro-batches done in it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


@dataclass
class TrainingState:
    """The objects a checkpoint restores, besides the data position."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler

    def to_checkpoint(
        self, position: Position, ctx: DistributedContext, **extra: Any
    ) -> dict[str, Any] | None:
        """The checkpoint dictionary on rank 0 (``None`` elsewhere); every rank must call it, since it gathers every
        rank's RNG states. ``extra`` adds entries (the run and model configs, a best score). The tensors are the live
        ones: save the dictionary before training goes on."""
        states = gather_objects(rng_state())
        if not ctx.is_main:
            return None
        return {
            "step": position.step,
            "position": asdict(position),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": states,
            "world_size": ctx.world_size,
            **extra,
        }

    def restore(
        self, state: dict[str, Any], ctx: DistributedContext, *, seed: int, steps_per_epoch: int
    ) -> Position:
        """Load ``state`` into every object and this rank's RNGs, and return the saved position.

        A checkpoint written by another number of processes cannot give each rank its own RNG states back: the
        RNGs are then reseeded from (seed, rank, step) and the rest of the epoch is dealt to the ranks anew, so a few
        of its items may be seen twice or skipped (logged as a warning).
        """
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        position = Position(**state["position"])
        states = state["rng"]
        if len(states) == ctx.world_size:
            set_rng_state(states[ctx.rank])
            return position
        if ctx.is_main:
            log.warning(
                "checkpoint was written by %d processes, this run has %d: resuming approximately",
                len(states), ctx.world_size,
            )  # fmt: skip
        seed_everything(seed + ctx.rank + position.step)
        position.batch_in_epoch = min(position.batch_in_epoch, steps_per_epoch - 1)
        return position


def checkpoint_to_resume(
    resume: str, directory: Path, ctx: DistributedContext, *, overwrite: bool = False
) -> Path | None:
    """The checkpoint that option ``resume`` names, or ``None`` for a fresh start.

    ``"auto"``: the newest checkpoint of ``directory`` that loads and holds every resume entry (chosen by rank 0 and
    broadcast, so every rank loads the same file); ``"none"``: a fresh start; anything else: that file. A fresh start
    in a folder that holds checkpoint files raises :class:`ConfigError` unless ``overwrite`` moves them aside.
    """
    if resume not in ("auto", "none"):
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"option --resume: checkpoint file {resume} does not exist")
        check_entries(load_checkpoint(path), path, RESUME_ENTRIES)
        return path
    decision: tuple[str | None, str | None] = (None, None)
    if ctx.is_main:
        decision = _decide(resume, directory, overwrite)
    chosen, refusal = broadcast_object(decision)
    if refusal is not None:
        raise ConfigError(refusal)
    return None if chosen is None else Path(chosen)


def _decide(resume: str, directory: Path, overwrite: bool) -> tuple[str | None, str | None]:
    """(checkpoint to load, reason to refuse), decided on rank 0."""
    if resume == "auto":
        found = find_latest_checkpoint(directory, required=RESUME_ENTRIES)
        if found is not None:
            return str(found[0]), None
    existing = [path.name for _, path in list_checkpoints(directory)]
    if not existing:
        return None, None
    if not overwrite:
        why = "none of them can be resumed" if resume == "auto" else "--resume none was given"
        return None, (
            f"{directory} holds checkpoints of another run ({', '.join(existing)}) and {why}; a fresh start "
            "would overwrite or prune them. Pass --overwrite to move them aside and start fresh, or choose "
            "another --output-dir"
        )
    aside = set_aside(directory)
    log.warning("starting fresh: moved the checkpoints %s of an earlier run to %s", existing, aside)
    return None, None


def set_aside(directory: Path) -> Path:
    """Move every checkpoint file of ``directory`` and its ``latest`` pointer into a new ``replaced-<UTC time>``
    folder beside them; returns that folder."""
    aside = directory / time.strftime("replaced-%Y%m%d-%H%M%S", time.gmtime())
    suffix = 0
    while aside.exists():
        suffix += 1
        aside = aside.with_name(f"{aside.name.split('.')[0]}.{suffix}")
    aside.mkdir()
    for _, path in list_checkpoints(directory):
        path.rename(aside / path.name)
    latest = directory / LATEST_FILE
    if latest.exists():
        latest.rename(aside / LATEST_FILE)
    return aside


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``field: saved -> current`` for every (nested) field whose value differs between two config dictionaries."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_differences(old, new, f"{prefix}{key}.")
        elif old != new and not (isinstance(old, list) and isinstance(new, tuple) and tuple(old) == new):
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes
