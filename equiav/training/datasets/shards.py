"""Tar shards (WebDataset layout) of decoded but un-augmented samples, and the iterable dataset that reads them.

Layout: ``shard-000000.tar``, ``shard-000001.tar``, ... with, per sample ``KEY`` (its running number),
``KEY.fbank.npy`` (the normalized (T, F) filterbank as float16), ``KEY.frame_0.jpg`` .. ``KEY.frame_{n-1}.jpg``
(``.png`` for AV-digits) and ``KEY.json`` (``id``, ``source`` and ``label`` or ``labels`` class indices). The files
are plain tars that the ``webdataset`` package also reads; this module reads and writes them with ``tarfile`` only.
``shards.json`` beside them lists every shard with its sample count and records the audio settings the filterbanks
were computed with, which must match the model's.

Equal batches per rank: every rank yields exactly ``floor(total / world_size)`` items per epoch (a ``BadItem`` counts
as an item). The shards, in an order shuffled per epoch (training) or in index order (validation), form one stream
of ``total`` samples; rank r reads the r-th contiguous block of that many samples, and its data-loader workers split
that block into contiguous parts of near-equal size. Shards therefore need not divide evenly among ranks (one shard
is enough), and each sample is read at most once per epoch; the ``total % world_size`` samples at the end of the
stream are skipped, different ones each epoch. With the same batch size and worker count on every rank (as DDP
requires anyway), every rank gets the same number of batches (``batches_per_rank``). A shard that cannot be read
yields a ``BadItem`` for each of its missing samples, so the counts stay equal.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from ...config import EquiAVConfig
from ...errors import DatasetError, ImageDecodeError, InvalidInputError
from ...image import to_rgb
from ..distributed import get_rank, get_world_size
from .config import DataConfig, check_split
from .items import BadItem, SharedEpoch, ViewMaker, item_failure, item_generator
from .mapped import RawSample, frame_choice

INDEX_FILE = "shards.json"
FORMAT = "equiav-shards"
VERSION = 1
AUDIO_FIELDS = (
    "sample_rate", "num_mel_bins", "target_length", "frame_shift_ms", "frame_length_ms", "audio_mean", "audio_std",
    "audio_normalization",
)  # fmt: skip
# Values of audio fields added after version 1 shards were first written; older indexes were written with these.
_AUDIO_FIELD_DEFAULTS = {"audio_normalization": "dataset"}
_FRAME_NAME = re.compile(r"^frame_(\d+)\.(jpg|jpeg|png)$")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
# Errors of a corrupt member (npy, json, image bytes): the sample becomes a BadItem.
_MEMBER_ERRORS = (ValueError, EOFError, OSError, KeyError, TypeError)


def audio_settings(model: EquiAVConfig) -> dict[str, Any]:
    """The model fields that determine a stored filterbank."""
    return {name: getattr(model, name) for name in AUDIO_FIELDS}


def fbank_to_npy(fbank: Tensor) -> bytes:
    """A filterbank as float16 ``.npy`` bytes (half the size; errors about 1e-3 in normalized units)."""
    buffer = io.BytesIO()
    np.save(buffer, fbank.detach().cpu().numpy().astype(np.float16))
    return buffer.getvalue()


class ShardWriter:
    """Writes ``RawSample`` s into tar shards of ``shard_size`` samples and, on ``close``, ``shards.json``.

    Each shard is written as ``NAME.partial`` and renamed when complete. ``meta`` is stored in the index (the
    audio settings, frame count, label kind and number of classes, source). Refuses a folder that already holds an
    index unless ``overwrite``.
    """

    def __init__(
        self, output: str | Path, shard_size: int, meta: dict[str, Any], overwrite: bool = False
    ) -> None:
        if not isinstance(shard_size, int) or shard_size < 1:
            raise InvalidInputError(f"shard_size must be a positive integer, got {shard_size!r}")
        self.output = Path(output)
        if (self.output / INDEX_FILE).exists() and not overwrite:
            raise DatasetError(
                f"{self.output} already holds shards ({INDEX_FILE}); choose another output folder"
            )
        self.output.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.meta = meta
        self.shards: list[dict[str, Any]] = []
        self.total = 0
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self._tar is not None:
            self._tar.close()

    def _add_member(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(payload))

    def add(self, sample: RawSample) -> None:
        if self._tar is None:
            name = f"shard-{len(self.shards):06d}.tar"
            self._tar = tarfile.open(self.output / f"{name}.partial", "w", format=tarfile.USTAR_FORMAT)
            self.shards.append({"file": name, "count": 0})
        key = f"{self.total:010d}"
        self._add_member(f"{key}.fbank.npy", fbank_to_npy(sample.fbank))
        for k, (extension, payload) in enumerate(sample.frames):
            self._add_member(f"{key}.frame_{k}.{extension}", payload)
        self._add_member(f"{key}.json", json.dumps(sample.meta, sort_keys=True).encode())
        self.total += 1
        self.shards[-1]["count"] += 1
        if self.shards[-1]["count"] == self.shard_size:
            self._finish_shard()

    def _finish_shard(self) -> None:
        self._tar.close()
        self._tar = None
        name = self.shards[-1]["file"]
        (self.output / f"{name}.partial").replace(self.output / name)

    def close(self) -> dict[str, Any]:
        """Finish the last shard and write the index; returns it."""
        if self._tar is not None:
            self._finish_shard()
        index = {
            "format": FORMAT,
            "version": VERSION,
            "total": self.total,
            "shards": self.shards,
            **self.meta,
        }
        (self.output / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
        return index


def _expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar``, ``a-001.tar``, ``a-002.tar`` (zero padding kept; nesting allowed)."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    first, last = match[1], match[2]
    width = len(first) if first.startswith("0") else 0
    names = []
    for number in range(int(first), int(last) + 1):
        names += _expand_braces(pattern[: match.start()] + f"{number:0{width}d}" + pattern[match.end() :])
    return names


class ShardIndex:
    """The shards to read (paths and sample counts) and the metadata of their ``shards.json``."""

    def __init__(self, shards: list[tuple[Path, int]], meta: dict[str, Any]) -> None:
        self.shards = shards
        self.meta = meta
        self.total = sum(count for _, count in shards)

    @classmethod
    def load(cls, spec: str | Path) -> ShardIndex:
        """From a folder holding ``shards.json``, that file, or a glob / brace pattern of shards listed in the
        ``shards.json`` of their folder (to read a subset, e.g. ``shards/shard-{000000..000009}.tar``)."""
        spec = str(spec)
        path = Path(spec)
        if path.is_dir():
            path = path / INDEX_FILE
        if path.name == INDEX_FILE or path.suffix == ".json":
            return cls._from_file(path, selected=None)
        names = sorted({p for name in _expand_braces(spec) for p in _glob(name)})
        if not names:
            raise DatasetError(f"{spec}: no shard file matches")
        folders = {Path(name).parent for name in names}
        if len(folders) != 1:
            raise DatasetError(
                f"{spec}: the matched shards must lie in one folder, found {sorted(map(str, folders))}"
            )
        return cls._from_file(folders.pop() / INDEX_FILE, selected={Path(name).name for name in names})

    @classmethod
    def _from_file(cls, path: Path, selected: set[str] | None) -> ShardIndex:
        try:
            meta = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetError(
                f"{path}: cannot read the shard index ({error}); write shards with "
                "`python -m equiav.training.prepare shards`"
            ) from error
        if (
            not isinstance(meta, dict)
            or meta.get("format") != FORMAT
            or not isinstance(meta.get("shards"), list)
        ):
            raise DatasetError(f"{path}: not an equiav shard index (format {FORMAT!r})")
        listed = {entry["file"]: int(entry["count"]) for entry in meta["shards"]}
        if selected is not None:
            unknown = sorted(selected - set(listed))
            if unknown:
                raise DatasetError(f"{path}: shard(s) {unknown} are not listed in this index")
        shards = [
            (path.parent / name, count)
            for name, count in listed.items()
            if selected is None or name in selected
        ]
        if not shards or not sum(count for _, count in shards):
            raise DatasetError(f"{path}: the selected shards hold no samples")
        return cls(shards, meta)


def _glob(pattern: str) -> list[str]:
    path = Path(pattern)
    if any(char in pattern for char in "*?["):
        return [str(p) for p in path.parent.glob(path.name) if p.is_file()]
    return [pattern] if path.is_file() else []


def _samples_in(path: Path, start: int, stop: int) -> Iterator[dict[str, bytes]]:
    """The members (by extension) of samples ``start`` .. ``stop - 1`` of a shard; earlier ones are skipped
    without reading their data. Raises ``OSError`` / ``tarfile.TarError`` when the file is unreadable."""
    with tarfile.open(path, "r:") as tar:
        position, key, infos = -1, None, {}
        while position < stop:
            info = tar.next()
            tar.members = []  # tarfile's list of members read so far is not needed; do not let it grow
            if info is not None and not info.isfile():
                continue
            name_key, _, extension = info.name.rpartition("/")[2].partition(".") if info else (None, "", "")
            if info is None or name_key != key:
                if key is not None and position >= start:
                    yield {ext: tar.extractfile(member).read() for ext, member in infos.items()}
                if info is None:
                    return
                key, infos, position = name_key, {}, position + 1
            infos[extension] = info


class ShardDataset(IterableDataset):
    """Pretraining items from tar shards, split over ranks and workers with equal counts per rank (see module).

    ``rank`` and ``world_size`` default to the ``torch.distributed`` group at iteration time. Items follow the
    same rules as the map-style datasets: each is drawn from ``item_generator(seed, epoch, index)`` with ``index``
    the sample's position in the shard index, so its content does not depend on the rank or worker reading it.
    Training order: shards shuffled per epoch, then a per-worker shuffle buffer of ``data.shuffle_buffer`` samples.
    Labels are the ones mapped when the shards were written (``data.label_csv`` is not read).
    """

    def __init__(
        self,
        data: DataConfig,
        model: EquiAVConfig,
        split: str,
        *,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        check_split(split)
        self.data, self.model, self.split = data, model, split
        self.index = ShardIndex.load(data.path_for(split))
        stored = {**_AUDIO_FIELD_DEFAULTS, **self.index.meta.get("audio", {})}
        expected = audio_settings(model)
        different = {
            name: (stored.get(name), value) for name, value in expected.items() if stored.get(name) != value
        }
        if different:
            described = ", ".join(
                f"{name} {old} (shards) vs {new} (model)" for name, (old, new) in different.items()
            )
            raise DatasetError(
                f"{data.path_for(split)}: the shards' filterbanks were computed with other audio settings: "
                f"{described}; rewrite them for this model"
            )
        self.label_kind = self.index.meta.get("labels", "none")
        self.num_classes = self.index.meta.get("num_classes")
        self.views = ViewMaker(data, model, split)
        self._epoch = SharedEpoch()
        self._placement_override = (rank, world_size)
        starts = np.cumsum([0] + [count for _, count in self.index.shards])
        self._starts = [int(s) for s in starts[:-1]]

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def _placement(self) -> tuple[int, int]:
        rank, world = self._placement_override
        rank = get_rank() if rank is None else rank
        world = get_world_size() if world is None else world
        if not 0 <= rank < world:
            raise InvalidInputError(
                f"rank must be in [0, world_size), got rank {rank} and world_size {world}"
            )
        return rank, world

    def samples_per_rank(self, world_size: int | None = None) -> int:
        """Items every rank yields per epoch: ``floor(total / world_size)`` (default: the current world size)."""
        world = self._placement()[1] if world_size is None else world_size
        if self.index.total < world:
            raise DatasetError(
                f"{self.data.path_for(self.split)}: {self.index.total} samples cannot give each of {world} ranks one"
            )
        return self.index.total // world

    def __len__(self) -> int:
        return self.samples_per_rank()

    def batches_per_rank(self, batch_size: int, num_workers: int = 0, drop_last: bool = True) -> int:
        """Batches a ``DataLoader(batch_size, num_workers, drop_last)`` yields on each rank per epoch."""
        parts = _split_evenly(self.samples_per_rank(), max(num_workers, 1))
        if drop_last:
            return sum(size // batch_size for size in parts)
        return sum(-(-size // batch_size) for size in parts)

    def plan(
        self, epoch: int, rank: int, world: int, worker: int, workers: int
    ) -> list[tuple[int, int, int]]:
        """(shard number, first sample, end sample) ranges that one worker of one rank reads in ``epoch``."""
        order = list(range(len(self.index.shards)))
        if self.split == "train":
            order = np.random.default_rng([self.data.seed, epoch]).permutation(order).tolist()
        per_rank = self.samples_per_rank(world)
        bounds = np.cumsum([rank * per_rank] + _split_evenly(per_rank, workers))
        low, high = int(bounds[worker]), int(bounds[worker + 1])
        ranges, offset = [], 0
        for shard in order:
            count = self.index.shards[shard][1]
            start, stop = max(low - offset, 0), min(high - offset, count)
            if start < stop:
                ranges.append((shard, start, stop))
            offset += count
        return ranges

    def __iter__(self) -> Iterator[dict[str, Tensor] | BadItem]:
        epoch = self._epoch.get() if self.split == "train" else 0
        rank, world = self._placement()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        raw = self._raw_stream(self.plan(epoch, rank, world, worker, workers))
        if self.split == "train" and self.data.shuffle_buffer > 1:
            generator = np.random.default_rng([self.data.seed, epoch, rank, worker])
            raw = _shuffled(raw, self.data.shuffle_buffer, generator)
        for index, where, members in raw:
            if isinstance(members, BadItem):
                yield members
            else:
                yield self._item(index, where, members, epoch)

    def _raw_stream(
        self, ranges: list[tuple[int, int, int]]
    ) -> Iterator[tuple[int, str, dict[str, bytes] | BadItem]]:
        for shard, start, stop in ranges:
            path = self.index.shards[shard][0]
            position = start
            try:
                for members in _samples_in(path, start, stop):
                    yield self._starts[shard] + position, f"{path}#{position}", members
                    position += 1
                reason = "the shard holds fewer samples than its index lists"
            except (OSError, tarfile.TarError, EOFError) as error:
                reason = f"cannot read shard ({error})"
            for missing in range(position, stop):
                index = self._starts[shard] + missing
                yield index, str(path), BadItem(index, f"{path}#{missing}", reason)

    def _item(
        self, index: int, where: str, members: dict[str, bytes], epoch: int
    ) -> dict[str, Tensor] | BadItem:
        try:
            return self._read_item(index, where, members, epoch)
        except Exception as error:
            raise item_failure(where, index, self.split, error) from error

    def _read_item(
        self, index: int, where: str, members: dict[str, bytes], epoch: int
    ) -> dict[str, Tensor] | BadItem:
        """Decode and augment one sample; a malformed member gives a ``BadItem``, any other error propagates."""
        generator = item_generator(self.data.seed, epoch, index, self.split)
        try:
            fbank = torch.from_numpy(np.load(io.BytesIO(members["fbank.npy"])).astype(np.float32))
            expected = (self.model.target_length, self.model.num_mel_bins)
            if tuple(fbank.shape) != expected:
                raise InvalidInputError(
                    f"stored filterbank has shape {tuple(fbank.shape)}, expected {expected}"
                )
            frames = sorted((int(m[1]), ext) for ext in members if (m := _FRAME_NAME.match(ext)))
            if not frames:
                raise InvalidInputError("the sample holds no frame")
            first, second = frame_choice(self.data, self.split, len(frames), generator)
            image = _decode_image(members[frames[first][1]], where)
            aug_image = image if second == first else _decode_image(members[frames[second][1]], where)
            labels = self._labels(json.loads(members["json"]))
        except _MEMBER_ERRORS as error:
            return BadItem(index, where, f"{type(error).__name__}: {error}")
        item = self.views.make(fbank, image, aug_image, generator)
        item["index"] = torch.tensor(index, dtype=torch.int64)
        item.update(labels)
        return item

    def _labels(self, meta: dict[str, Any]) -> dict[str, Tensor]:
        if self.label_kind == "single":
            return {"label": torch.tensor(int(meta["label"]), dtype=torch.int64)}
        if self.label_kind == "multi":
            vector = torch.zeros(int(self.num_classes), dtype=torch.float32)
            vector[[int(i) for i in meta["labels"]]] = 1.0
            return {"labels": vector}
        return {"label": torch.tensor(-1, dtype=torch.int64)}


def _decode_image(payload: bytes, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"{where}: cannot decode frame ({error})") from error


def _split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` sizes that differ by at most one, larger first."""
    return [total // parts + (1 if part < total % parts else 0) for part in range(parts)]


def _shuffled(stream: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Yield a random element of a ``size``-element buffer refilled from ``stream``, then drain it."""
    buffer: list[Any] = []
    for element in stream:
        buffer.append(element)
        if len(buffer) >= size:
            position = int(rng.integers(len(buffer)))
            buffer[position], buffer[-1] = buffer[-1], buffer[position]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer
