"""Map-style pretraining datasets over manifests and video files, and their common base class."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ...audio import crop_samples, load_fbank, waveform_to_fbank
from ...config import EquiAVConfig
from ...image import load_image
from ...video import open_video
from .config import DataConfig, check_split
from .items import DECODE_ERRORS, BadItem, SharedEpoch, ViewMaker, item_failure, item_generator, randint
from .labels import LabelSpace
from .sources import extraction_crop, frame_times, list_videos, read_manifest

JPEG_QUALITY = 90


@dataclass
class Decoded:
    """A sample before augmentation: filterbank, the images of both views, and its label tensors."""

    fbank: Tensor
    image: Image.Image
    aug_image: Image.Image
    labels: dict[str, Tensor]


@dataclass
class RawSample:
    """A sample as stored in a shard: normalized (T, F) filterbank, encoded frames ``(extension, bytes)`` in frame
    order, and JSON metadata (``id``, ``source`` and ``label`` or ``labels`` class indices)."""

    fbank: Tensor
    frames: list[tuple[str, bytes]]
    meta: dict[str, Any] = field(default_factory=dict)


def encode_image(image: Image.Image, extension: str = "jpg") -> bytes:
    buffer = io.BytesIO()
    if extension == "png":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def frame_choice(data: DataConfig, split: str, count: int, generator: torch.Generator) -> tuple[int, int]:
    """Frames of the original and augmented views: random in training (the second drawn separately only with
    ``independent_aug_frame``), the middle one (``count // 2``) in validation."""
    if split == "val":
        return count // 2, count // 2
    first = randint(generator, 0, count)
    return first, (randint(generator, 0, count) if data.independent_aug_frame else first)


class PretrainDataset(Dataset, ABC):
    """Base of the map-style datasets: seeds each item, catches unreadable files, builds the views.

    An item is a function of (``data.seed``, epoch, index) (see ``items``); ``set_epoch`` changes the training
    draws, also in running persistent workers. Unreadable items come back as ``BadItem``; any other failure
    to read an item raises ``DatasetError`` naming its file.
    """

    label_space: LabelSpace | None = None

    def __init__(self, data: DataConfig, model: EquiAVConfig, split: str) -> None:
        check_split(split)
        self.data, self.model, self.split = data, model, split
        self.views = ViewMaker(data, model, split)
        self._epoch = SharedEpoch()
        if data.label_csv is not None:
            self.label_space = LabelSpace.from_csv(data.label_csv)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def item_path(self, index: int) -> str:
        """The file that identifies item ``index`` in logs."""

    @abstractmethod
    def decode(self, index: int, generator: torch.Generator) -> Decoded:
        """Read item ``index``, drawing its frame choice from ``generator``; raises a decode error if unreadable."""

    def generator(self, index: int) -> torch.Generator:
        epoch = self.epoch if self.split == "train" else 0
        return item_generator(self.data.seed, epoch, index, self.split)

    def __getitem__(self, index: int) -> dict[str, Tensor] | BadItem:
        """Item ``index``, or a ``BadItem`` if its file is unreadable (a decode error).

        Any other exception (a bug, an unexpected error of a decoder) is raised again as ``DatasetError`` naming the
        file, chained from the original; its message survives PyTorch's re-raise out of a data-loader worker.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} items")
        try:
            return self._read(index)
        except Exception as error:
            raise item_failure(self.item_path(index), index, self.split, error) from error

    def _read(self, index: int) -> dict[str, Tensor] | BadItem:
        """Decode and augment item ``index``; a decode error gives a ``BadItem``, any other error propagates."""
        generator = self.generator(index)
        try:
            decoded = self.decode(index, generator)
        except DECODE_ERRORS as error:
            return BadItem(index, self.item_path(index), str(error))
        item = self.views.make(decoded.fbank, decoded.image, decoded.aug_image, generator)
        item["index"] = torch.tensor(index, dtype=torch.int64)
        item.update(decoded.labels)
        return item

    def label_tensors(self, labels: str | None, where: str) -> dict[str, Tensor]:
        """``labels`` multi-hot with a label CSV, else ``label`` = -1."""
        if self.label_space is None:
            return {"label": torch.tensor(-1, dtype=torch.int64)}
        return {"labels": self.label_space.multi_hot(self.label_space.encode(labels or "", where))}

    def label_meta(self, labels: str | None, where: str) -> dict[str, Any]:
        if self.label_space is None:
            return {}
        return {"labels": self.label_space.encode(labels or "", where)}


class ManifestDataset(PretrainDataset):
    """The authors' JSON manifest: audio from ``wav``, frames from ``{video_path}/frame_{k}/{video_id}.jpg``."""

    def __init__(self, data: DataConfig, model: EquiAVConfig, split: str) -> None:
        super().__init__(data, model, split)
        self.entries = read_manifest(data.path_for(split))
        if self.label_space is not None:
            for number, entry in enumerate(self.entries):
                self.label_space.encode(entry.labels or "", f"manifest entry {number} ({entry.video_id})")

    def __len__(self) -> int:
        return len(self.entries)

    def item_path(self, index: int) -> str:
        return self.entries[index].wav

    def decode(self, index: int, generator: torch.Generator) -> Decoded:
        entry = self.entries[index]
        first, second = frame_choice(self.data, self.split, self.data.frame_count, generator)
        fbank = load_fbank(entry.wav, self.model)
        image = load_image(entry.frame(first))
        aug_image = image if second == first else load_image(entry.frame(second))
        return Decoded(fbank, image, aug_image, self.label_tensors(entry.labels, entry.video_id))

    def raw_sample(self, index: int) -> RawSample:
        """The shard form of entry ``index``: its filterbank and the files of all ``frame_count`` frames."""
        entry = self.entries[index]
        fbank = load_fbank(entry.wav, self.model)
        frames = []
        for k in range(self.data.frame_count):
            load_image(entry.frame(k))  # fails here, naming the file, if the frame is unreadable
            frames.append((entry.frame(k).suffix.lstrip(".").lower(), entry.frame(k).read_bytes()))
        meta = {
            "id": entry.video_id,
            "source": entry.wav,
            **self.label_meta(entry.labels, entry.video_id),
        }
        return RawSample(fbank, frames, meta)


class VideoDataset(PretrainDataset):
    """Video files decoded on the fly with PyAV: the soundtrack (16 kHz, first channel, as CAV-MAE) and one of the
    ``frame_count`` CAV-MAE frame positions, cropped as CAV-MAE saves its frames (``extraction_crop``), so items
    match those of a manifest written by ``prepare extract``.

    Only what an item uses is decoded: the soundtrack up to the last sample of the kept filterbank frames
    (``crop_samples``) and the two frames, each scaled to ``frame_size`` while FFmpeg converts it to RGB."""

    def __init__(self, data: DataConfig, model: EquiAVConfig, split: str) -> None:
        super().__init__(data, model, split)
        self.entries = list_videos(data.path_for(split))
        if self.label_space is not None:
            for entry in self.entries:
                self.label_space.encode(entry.labels or "", str(entry.path))

    def __len__(self) -> int:
        return len(self.entries)

    def item_path(self, index: int) -> str:
        return str(self.entries[index].path)

    def _clip(self, index: int, positions: list[int]) -> tuple[Tensor, list[Image.Image]]:
        """The filterbank and the frames at ``positions`` (of the ``frame_count`` CAV-MAE positions), from one open
        of the file."""
        path, rate, size = self.entries[index].path, self.model.sample_rate, self.data.frame_size
        with open_video(path) as video:
            waveform = video.audio(rate, max_seconds=crop_samples(self.model) / rate)
            times = frame_times(video.info(), self.data.frame_count, self.data.clip_seconds)
            frames = video.frames(times=[times[k] for k in positions], short_side=size)
        fbank = waveform_to_fbank(waveform, rate, self.model, source=str(path))
        return fbank, [extraction_crop(frame, size) for frame in frames]

    def decode(self, index: int, generator: torch.Generator) -> Decoded:
        first, second = frame_choice(self.data, self.split, self.data.frame_count, generator)
        fbank, (image, aug_image) = self._clip(index, [first, second])
        entry = self.entries[index]
        return Decoded(fbank, image, aug_image, self.label_tensors(entry.labels, str(entry.path)))

    def raw_sample(self, index: int) -> RawSample:
        entry = self.entries[index]
        fbank, frames = self._clip(index, list(range(self.data.frame_count)))
        meta = {
            "id": entry.video_id,
            "source": str(entry.path),
            **self.label_meta(entry.labels, str(entry.path)),
        }
        return RawSample(fbank, [("jpg", encode_image(f)) for f in frames], meta)
