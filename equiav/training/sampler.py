"""Per-rank samplers: which dataset indices each training process reads in each epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class RankSampler(Sampler[int]):
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

    def order(self) -> list[int]:
        """The epoch's indices over all ranks, before they are dealt."""
        if not self.shuffle:
            return list(range(self.size))
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()

    def indices(self) -> list[int]:
        used = self.order()[: self.batches * self.batch_size * self.world_size]
        return used[self.rank :: self.world_size][self.start_batch * self.batch_size :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return (self.batches - self.start_batch) * self.batch_size


class WeightedRankSampler(RankSampler):
    """``RankSampler`` drawing each epoch's items with replacement, with probability proportional to ``weights``."""

    def __init__(self, weights: torch.Tensor, **kwargs) -> None:
        super().__init__(weights.numel(), **kwargs)
        self.weights = weights

    def order(self) -> list[int]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, 1]).generate_state(1)[0])
        count = self.batches * self.batch_size * self.world_size
        drawn = torch.multinomial(
            self.weights, count, replacement=True, generator=torch.Generator().manual_seed(seed)
        )
        return drawn.tolist()
