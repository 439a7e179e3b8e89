"""``DataConfig``: which pretraining data to read and how to draw its random choices."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from ...dataclass_io import from_dict
from ...errors import ConfigError

DATA_KINDS = ("avdigits", "manifest", "videos", "shards")
SPLITS = ("train", "val")


@dataclass
class DataConfig:
    """Where the pretraining data lives and how items are drawn from it.

    Fields:

    * ``kind``: ``"avdigits"`` (spoken + handwritten digits), ``"manifest"`` (the authors' JSON manifest),
      ``"videos"`` (a folder or CSV of video files decoded on the fly) or ``"shards"`` (tar shards written by
      ``python -m equiav.training.prepare shards``).
    * ``path``: the data of the ``"train"`` split: the AV-digits root (the shared data folder, its ``data`` folder or
      the FSDD folder), a manifest JSON, a video folder or CSV, or shards (a folder holding ``shards.json``, that
      file, or a glob / ``{000..009}`` pattern of ``.tar`` files).
    * ``val_path``: the same for the ``"val"`` split (not used by AV-digits, whose split is by speaker).
    * ``label_csv``: the authors' ``class_labels_indices.csv`` (columns ``index``, ``mid``); when given, items carry a
      multi-hot ``labels`` vector. Labels are optional for pretraining.
    * ``val_speakers``: FSDD speakers held out for validation (AV-digits).
    * ``val_fraction_images``: fraction of each digit's MNIST images held out for validation (AV-digits).
    * ``image_split_seed``: seed of that fixed image split, separate from ``seed`` so that changing the training seed
      never moves images between the splits.
    * ``frame_count``: frames per video (``frame_0`` .. ``frame_{n-1}``); training picks one at random, validation
      the middle one (``frame_count // 2``, frame 5 for 10 frames, as the authors).
    * ``clip_seconds``: videos decoded on the fly take their frames from this many first seconds (CAV-MAE: 10).
    * ``frame_size``: videos decoded on the fly are cut to frames as CAV-MAE saves them: short side resized to this
      size (bicubic), then a centered square of it (224, what ``prepare extract`` writes by default).
    * ``independent_aug_frame``: draw the frame of the augmented view independently of the original view's frame,
      as the authors did (bug B5); by default both views start from the same frame, so the augmentation vector
      describes the whole difference between them. For AV-digits the "frame" is the paired MNIST image.
    * ``max_bad_fraction``: past this fraction of unreadable items ``BadItemTracker`` stops the run.
    * ``min_items_before_error``: items seen before that fraction is enforced, so that one early bad file does not
      stop a run.
    * ``faithful_augment``: the authors' augmentation quirks (``AudioAugmentConfig.faithful``); the augmented audio
      is then the authors' 3-channel tensor (3, T, F).
    * ``roll_audio``: roll the training split's original audio circularly in time by a random number of frames in
      [-T, T) (reference 7.4); the augmented audio view starts from the rolled filterbank.
    * ``audio_freq_warp``: training split: stretch the original filterbank's mel axis by a random factor in
      [1 - w, 1 + w] (``warp_frequency``, after the roll), so the model meets more vocal-tract lengths than the
      training speakers have; the augmented audio view starts from the warped filterbank. 0 (default) disables it.
    * ``num_views``: augmentation vectors per modality for the centroid (``t_audio_views``, ``t_image_views``).
    * ``seed``: seed of every random draw; an item is a function of (seed, epoch, index).
    * ``shuffle_buffer``: samples each data-loader worker holds to shuffle shards (training split only).
    """

    kind: str
    path: str
    val_path: str | None = None
    label_csv: str | None = None
    val_speakers: tuple[str, ...] = ("theo",)
    val_fraction_images: float = 0.2
    image_split_seed: int = 0
    frame_count: int = 10
    clip_seconds: float = 10.0
    frame_size: int = 224
    independent_aug_frame: bool = False
    max_bad_fraction: float = 0.01
    min_items_before_error: int = 100
    faithful_augment: bool = False
    roll_audio: bool = True
    audio_freq_warp: float = 0.0
    num_views: int = 16
    seed: int = 0
    shuffle_buffer: int = 500

    def __post_init__(self) -> None:
        if isinstance(self.val_speakers, str):
            self.val_speakers = (self.val_speakers,)
        self.val_speakers = tuple(self.val_speakers)
        self.path = str(self.path)
        self.validate()

    def validate(self) -> None:
        """Reject values that would otherwise fail later with an obscure error."""
        if self.kind not in DATA_KINDS:
            raise ConfigError(f"data config field 'kind' must be one of {DATA_KINDS}, got {self.kind!r}")
        if not self.path:
            raise ConfigError("data config field 'path' must name the data (a folder, file or shard pattern)")
        for name in ("frame_count", "num_views", "frame_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"data config field '{name}' must be a positive integer, got {value!r}")
        for name in ("seed", "image_split_seed", "min_items_before_error", "shuffle_buffer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"data config field '{name}' must be a non-negative integer, got {value!r}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(
                f"data config field 'max_bad_fraction' must be in [0, 1], got {self.max_bad_fraction}"
            )
        if not 0.0 < self.val_fraction_images < 1.0:
            raise ConfigError(
                f"data config field 'val_fraction_images' must be in (0, 1), got {self.val_fraction_images}"
            )
        if not 0.0 <= self.audio_freq_warp < 1.0:
            raise ConfigError(
                f"data config field 'audio_freq_warp' must be in [0, 1), got {self.audio_freq_warp}"
            )
        if not self.clip_seconds > 0:
            raise ConfigError(f"data config field 'clip_seconds' must be positive, got {self.clip_seconds}")
        if not all(isinstance(name, str) and name for name in self.val_speakers):
            raise ConfigError(
                f"data config field 'val_speakers' must hold speaker names, got {self.val_speakers!r}"
            )

    def path_for(self, split: str) -> str:
        """The data path of ``split``; raises ``ConfigError`` when the validation split has none."""
        check_split(split)
        if split == "train" or self.kind == "avdigits":
            return self.path
        if self.val_path is None:
            raise ConfigError(
                f"data config field 'val_path' is needed for the 'val' split of kind {self.kind!r}"
            )
        return str(self.val_path)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["val_speakers"] = list(self.val_speakers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Build from a dict (e.g. a saved run config), rejecting unknown fields."""
        return from_dict(cls, data, "data config")

    def replace(self, **changes: Any) -> DataConfig:
        return dataclasses.replace(self, **changes)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
