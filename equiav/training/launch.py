"""Deprecated: process setup moved to :mod:`equiav.training.distributed` (process group, device, collectives),
:mod:`equiav.training.rng` (seeding, RNG snapshots) and :mod:`equiav.training.resume` (which checkpoint to resume).
The old names keep working for one release."""

from ..deprecation import warn_moved
from .distributed import (
    DistributedContext,
    barrier,
    resolve_device,
    setup_distributed,
    teardown_distributed,
)
from .resume import checkpoint_to_resume
from .rng import rng_state, seed_everything, set_deterministic, set_rng_state

warn_moved("equiav.training.launch", "equiav.training.distributed / .rng / .resume")

__all__ = [
    "DistributedContext",
    "barrier",
    "checkpoint_to_resume",
    "resolve_device",
    "rng_state",
    "seed_everything",
    "set_deterministic",
    "set_rng_state",
    "setup_distributed",
    "teardown_distributed",
]
