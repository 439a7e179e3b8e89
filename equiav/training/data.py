"""Deprecated: the training data now lives in :mod:`equiav.training.datasets` (``build_dataset``, ``collate_items``
and the dataset classes). This module keeps the old names for one release."""

from ..deprecation import warn_moved
from .datasets import *  # noqa: F403
from .datasets import __all__ as _moved
from .datasets import build_dataset as build_pretrain_dataset
from .datasets import collate_items as collate_pretrain

warn_moved("equiav.training.data", "equiav.training.datasets")

__all__ = [*_moved, "build_pretrain_dataset", "collate_pretrain"]
