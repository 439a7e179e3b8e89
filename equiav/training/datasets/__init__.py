"""Training data: every pretraining item gives the original and augmented views, their vectors and the centroid vectors.

Four sources (``DataConfig.kind``):

* ``"manifest"``: the authors' JSON manifest (``wav``, ``video_id``, ``video_path`` with
  ``frame_{k}/{video_id}.jpg``, optional ``labels`` mapped through ``label_csv``);
* ``"videos"``: a folder or CSV of video files decoded on the fly with PyAV (soundtrack + one of ``frame_count``
  frames); ``python -m equiav.training.prepare extract`` writes the same inputs as a manifest, for speed;
* ``"shards"``: tar shards written by ``python -m equiav.training.prepare shards``, read as an ``IterableDataset``
  that gives every rank the same number of batches;
* ``"avdigits"``: spoken digits (FSDD) paired with handwritten digits (MNIST), split by speaker.

An item is a dict of tensors: ``audio`` (T, F) normalized filterbank, ``image`` (3, S, S) normalized, ``audio_aug``
(T, F) (3, T, F with ``faithful_augment``), ``image_aug`` (3, S, S) augmented then normalized, ``t_audio`` (24,),
``t_image`` (18,), ``t_audio_views`` (num_views, 24), ``t_image_views`` (num_views, 18), ``index`` (int64), and
``label`` (int64, -1 when unknown) or, with a label CSV, ``labels`` (C,) multi-hot float.

Reproducibility: an item is a function of (``seed``, epoch, index): each one seeds its own ``torch.Generator`` from
those three numbers (``item_generator``), so data-loader workers, resumed runs and any worker count give the same
draws; call ``dataset.set_epoch(epoch)`` before each epoch (it reaches persistent workers too). The validation
split draws from (seed, index) only and does not roll the audio.

Unreadable items: ``__getitem__`` (or the shard iterator) returns a ``BadItem(index, path, reason)`` instead of
raising; ``collate_items`` stacks the good items and lists the bad ones under ``"bad"``; ``BadItemTracker``
logs each bad path and raises ``DatasetError`` once more than ``max_bad_fraction`` of the items are bad.
"""

from __future__ import annotations

import os
import stat

from torch.utils.data import Dataset

from ...config import EquiAVConfig
from ...errors import ConfigError
from .avdigits import AVDigitsDataset, avdigits_eval_set
from .config import DATA_KINDS, DataConfig, check_split
from .items import BadItem, BadItemTracker, ViewMaker, collate_items, item_generator
from .labels import LabelSpace
from .mapped import ManifestDataset, PretrainDataset, RawSample, VideoDataset
from .shards import ShardDataset, ShardIndex, ShardWriter
from .sources import extraction_crop, frame_times, list_videos, read_manifest

_DATASETS = {
    "avdigits": AVDigitsDataset,
    "manifest": ManifestDataset,
    "videos": VideoDataset,
    "shards": ShardDataset,
}


def build_dataset(data: DataConfig, model: EquiAVConfig, split: str) -> Dataset:
    """The dataset of ``split`` (``"train"`` or ``"val"``) described by ``data``, with inputs for ``model``.

    Map-style for every kind but ``"shards"``, which is an ``IterableDataset`` that splits itself over ranks and
    workers (use it without a sampler). Both have ``set_epoch``. Pretraining reads its items as they are; fine-tuning
    and the evaluations wrap them (``equiav.training.classification.LabelledDataset``).
    """
    check_split(split)
    _check_not_special(data.path_for(split))
    return _DATASETS[data.kind](data, model, split)


def _check_not_special(path: str) -> None:
    """Refuse a data path that is neither a regular file nor a directory (a FIFO would block the run forever); a path
    that does not exist, a URL or a brace pattern is left to the dataset, which names what it expected."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ConfigError(f"option --data.path: {path} is not a regular file or a directory")


__all__ = [
    "DATA_KINDS",
    "AVDigitsDataset",
    "BadItem",
    "BadItemTracker",
    "DataConfig",
    "LabelSpace",
    "ManifestDataset",
    "PretrainDataset",
    "RawSample",
    "ShardDataset",
    "ShardIndex",
    "ShardWriter",
    "VideoDataset",
    "ViewMaker",
    "avdigits_eval_set",
    "build_dataset",
    "collate_items",
    "extraction_crop",
    "frame_times",
    "item_generator",
    "list_videos",
    "read_manifest",
]
