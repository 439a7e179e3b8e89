"""Deprecated: the pieces of this module moved (``Position`` and ``TrainingState`` to
:mod:`equiav.training.resume`, ``ShardSampler`` to :class:`equiav.training.sampler.RankSampler`,
``autocast_context`` to :mod:`equiav.training.trainer`). The old names keep working for one release."""

from ..deprecation import warn_moved
from .resume import Position, TrainingState
from .sampler import RankSampler as ShardSampler
from .trainer import autocast_context

warn_moved("equiav.training.loop", "equiav.training.resume / .sampler / .trainer")

__all__ = ["Position", "ShardSampler", "TrainingState", "autocast_context"]
