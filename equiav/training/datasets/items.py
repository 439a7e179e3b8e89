"""What every pretraining dataset shares: seeded draws, the two views and their vectors, bad items and collation.

Reproducibility: item ``index`` of epoch ``epoch`` draws all of its randomness (frame choice, audio roll, the two
augmentations and the centroid vectors) from its own ``torch.Generator``, seeded from (``seed``, split, ``epoch``,
``index``) through ``numpy.random.SeedSequence``. No global random state is read, so the same item comes out in a
data-loader worker, in the main process, after a resume or with any number of workers. The validation split always
uses epoch 0: its draws depend on (seed, index) only.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ...config import EquiAVConfig
from ...errors import (
    AudioDecodeError,
    DatasetError,
    ImageDecodeError,
    InvalidInputError,
    VideoDecodeError,
)
from ...image import preprocess_image, to_rgb
from ..augment import AudioAugmenter, VisualAugmenter
from .config import DataConfig

logger = logging.getLogger("equiav.data")

# Failures that make one item unreadable; anything else is a bug and propagates (map-style datasets raise it
# again as DatasetError naming the item's file).
DECODE_ERRORS = (AudioDecodeError, ImageDecodeError, VideoDecodeError, InvalidInputError, OSError)
_SPLIT_STREAMS = {"train": 0, "val": 1}


def item_generator(seed: int, epoch: int, index: int, split: str = "train") -> torch.Generator:
    """The CPU generator of one item: a function of (seed, split, epoch, index) only."""
    entropy = [int(seed), _SPLIT_STREAMS[split], int(epoch), int(index)]
    high, low = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed((int(high) << 32) | int(low))
    return generator


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """One integer uniform in [low, high) from ``generator``."""
    return int(torch.randint(low, high, (), generator=generator))


@dataclass(frozen=True)
class BadItem:
    """An item that could not be read: returned by ``__getitem__`` in place of the item, never turned into zeros."""

    index: int
    path: str
    reason: str


def item_failure(where: str, index: int, split: str, error: Exception) -> DatasetError:
    """The error for an unexpected failure (not a decode error) while reading item ``index`` from ``where``."""
    return DatasetError(
        f"{where}: reading item {index} of the {split} split failed with {type(error).__name__}: {error}"
    )


def warp_frequency(fbank: Tensor, factor: float) -> Tensor:
    """Stretch the mel axis (-1) of ``fbank`` by ``factor`` (> 1 moves energy to higher bins), interpolating linearly
    between bins and repeating the edge bin where the source falls outside: a cheap vocal-tract-length perturbation."""
    bins = fbank.shape[-1]
    source = (torch.arange(bins, dtype=torch.float32) / factor).clamp_(0, bins - 1)
    low = source.floor().long()
    high = (low + 1).clamp_(max=bins - 1)
    weight = (source - low).to(fbank.dtype)
    return torch.lerp(fbank[..., low], fbank[..., high], weight)


def collate_items(items: list[dict[str, Tensor] | BadItem]) -> dict[str, Any]:
    """Stack the good items key by key and list the bad ones under ``"bad"``.

    The batch holds the stacked tensors of the good items (``index`` and ``label`` become (B,) int64) and ``bad``, a
    list of ``BadItem`` (empty when every item was read). When every item of the batch is bad, ``bad`` is its only
    key.
    """
    good = [item for item in items if not isinstance(item, BadItem)]
    batch: dict[str, Any] = {"bad": [item for item in items if isinstance(item, BadItem)]}
    if not good:
        return batch
    keys = set(good[0])
    for item in good[1:]:
        if set(item) != keys:
            raise InvalidInputError(
                f"collate_items: items have different keys, {sorted(keys)} and {sorted(item)}"
            )
    for key in good[0]:
        batch[key] = torch.stack([item[key] for item in good])
    return batch


class BadItemTracker:
    """Counts read and unreadable items over a run and stops it when too many are unreadable.

    ``update(batch)`` logs every bad item with its path on the ``equiav.data`` logger and raises ``DatasetError``
    once the bad fraction exceeds ``max_fraction``, but only after ``min_items`` items have been seen, so one early
    bad file cannot stop a run. ``close()`` applies the limit whatever the count (call it at the end of an epoch).
    Counts are per process; each rank enforces the limit on the items it reads.
    """

    def __init__(self, max_fraction: float = 0.01, min_items: int = 100, keep_paths: int = 5) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise InvalidInputError(f"max_fraction must be in [0, 1], got {max_fraction}")
        if min_items < 0 or keep_paths < 1:
            raise InvalidInputError(
                f"min_items must be >= 0 and keep_paths >= 1, got {min_items} and {keep_paths}"
            )
        self.max_fraction = max_fraction
        self.min_items = min_items
        self.seen = 0
        self.bad = 0
        self.recent: deque[BadItem] = deque(maxlen=keep_paths)

    @property
    def fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def update(self, batch: dict[str, Any]) -> None:
        bad = batch.get("bad", [])
        good = len(batch["index"]) if "index" in batch else 0
        self.seen += good + len(bad)
        self.bad += len(bad)
        for item in bad:
            logger.warning("skipped unreadable item %d (%s): %s", item.index, item.path, item.reason)
            self.recent.append(item)
        if self.seen >= self.min_items:
            self._check()

    def close(self) -> None:
        """Apply the limit now, even below ``min_items`` (a small data set whose items are all bad must fail)."""
        self._check()

    def _check(self) -> None:
        if self.bad and self.fraction > self.max_fraction:
            paths = "; ".join(f"{item.path} ({item.reason})" for item in self.recent)
            raise DatasetError(
                f"{self.bad} of {self.seen} items ({self.fraction:.2%}) could not be read, more than the limit "
                f"max_bad_fraction={self.max_fraction:.2%}; last unreadable: {paths}"
            )


def pil_to_unit_tensor(image: Image.Image) -> Tensor:
    """An RGB PIL image as a float32 (3, H, W) tensor in [0, 1]."""
    pixels = np.asarray(to_rgb(image), dtype=np.uint8)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(torch.float32).div_(255)


class ViewMaker:
    """Turns one decoded sample (filterbank + two source images) into the pretraining item.

    Draw order from the item generator, fixed so items are reproducible: audio roll (training split with
    ``roll_audio``), frequency warp (training split with ``audio_freq_warp`` > 0), audio augmentation, visual
    augmentation, ``num_views`` audio vectors, ``num_views`` visual vectors.
    """

    def __init__(self, data: DataConfig, model: EquiAVConfig, split: str) -> None:
        self.model = model
        self.num_views = data.num_views
        self.roll = data.roll_audio and split == "train"
        self.freq_warp = data.audio_freq_warp if split == "train" else 0.0
        self.audio = AudioAugmenter.for_config(model, faithful=data.faithful_augment)
        self.visual = VisualAugmenter.for_config(model, faithful=data.faithful_augment)
        self._mean = torch.tensor(model.image_mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(model.image_std, dtype=torch.float32).view(3, 1, 1)

    def make(
        self, fbank: Tensor, image: Image.Image, aug_image: Image.Image, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """``fbank`` is the normalized (T, F) filterbank; ``image`` feeds the original view (resize + center crop)
        and ``aug_image`` the augmented one (the crop is drawn on its full size)."""
        expected = (self.model.target_length, self.model.num_mel_bins)
        if tuple(fbank.shape) != expected:
            raise DatasetError(f"filterbank has shape {tuple(fbank.shape)}, but the model expects {expected}")
        if self.roll:
            length = expected[0]
            fbank = torch.roll(fbank, randint(generator, -length, length), dims=0)
        if self.freq_warp > 0:
            unit = float(torch.rand((), generator=generator))
            fbank = warp_frequency(fbank, 1.0 + self.freq_warp * (2.0 * unit - 1.0))
        audio_params = self.audio.sample(generator)
        raw = pil_to_unit_tensor(aug_image)
        visual_params = self.visual.sample(generator, input_size=tuple(raw.shape[-2:]))
        image_aug = (self.visual.apply(raw, visual_params) - self._mean) / self._std
        return {
            "audio": fbank.contiguous(),
            "image": preprocess_image(image, self.model),
            "audio_aug": self.audio.apply(fbank, audio_params),
            "image_aug": image_aug,
            "t_audio": self.audio.vector(audio_params),
            "t_image": self.visual.vector(visual_params),
            "t_audio_views": self.audio.sample_vectors(self.num_views, generator),
            "t_image_views": self.visual.sample_vectors(self.num_views, generator),
        }


class SharedEpoch:
    """The current epoch in shared memory, so ``set_epoch`` also reaches persistent data-loader workers."""

    def __init__(self) -> None:
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise InvalidInputError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._value.fill_(epoch)

    def get(self) -> int:
        return int(self._value)
