"""What the pretraining and fine-tuning loops share: the data position, the per-rank sampler, mixed precision, and
the checkpointed training state with its exact (or, on another world size, approximate) resume."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from .launch import DistributedContext, gather_rng_states, seed_everything, set_rng_state

log = logging.getLogger(__name__)


@dataclass
class Position:
    """Where training stands: optimizer steps done, and the epoch and micro-batches done in it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class ShardSampler(Sampler[int]):
    """This rank's dataset indices for one epoch: a seeded shuffle cut to equal full batches on every rank.

    The permutation depends on (seed, epoch) only. Its first ``world_size * batches * batch_size`` entries are dealt
    to the ranks in turn (rank r takes positions r, r + W, ...), so every rank gets the same number of full batches.
    ``set_epoch(epoch, start_batch)`` starts the epoch after ``start_batch`` batches, which is how a resumed run skips
    the batches it already trained on without reading them.
    """

    def __init__(
        self, size: int, *, batch_size: int, rank: int, world_size: int, seed: int, shuffle: bool = True
    ):
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.batches = size // (world_size * batch_size)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> list[int]:
        if self.shuffle:
            seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()
        else:
            order = list(range(self.size))
        used = order[: self.batches * self.batch_size * self.world_size]
        return used[self.rank :: self.world_size][self.start_batch * self.batch_size :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return (self.batches - self.start_batch) * self.batch_size


def autocast_context(precision: str, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` for ``"bf16"`` / ``"fp16"`` on ``device``; nothing for ``"fp32"``."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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
        states = gather_rng_states(ctx)
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
