"""Tar shards (WebDataset layout) of decoded but un-augmented samples, and the iterable dataset that reads them.

Layout: ``shard-000000.tar``, ``shard-000001.tar``, ... with, per sample ``KEY`` (its item number in the source),
``KEY.fbank.npy`` (the normalized (T, F) filterbank as float16), ``KEY.frame_0.jpg`` .. ``KEY.frame_{n-1}.jpg``
(``.png`` for AV-digits) and ``KEY.json`` (``id``, ``source`` and ``label`` or ``labels`` class indices).
``shards.json`` beside them lists every shard with its sample count and records the audio settings the filterbanks
were computed with, which must match the model's.

Where shards live (``equiav.storage``): a local folder, a URL (``https://``, ``s3://``, ``gs://`` with the
``remote`` extra), or a ``pipe:`` command, given as the folder, its ``shards.json``, or a brace / glob pattern of
shards (``https://host/shards/shard-{000000..000009}.tar``, ``pipe:curl -s https://host/shards/shard-{000..009}.tar``);
the index is the location with the shard's file name replaced by ``shards.json``. The tar streams are read with
webdataset's tar iterator and key grouping; they are opened with fsspec (URLs) or webdataset's pipe opener.

Writing (``ShardWriter``) goes to a local folder or an object store, in independent parts (``equiav.parts``): each
part writes its own numbered shards, resumes after a kill without rewriting finished ones, and the last part to
finish writes ``shards.json``.

Equal batches per rank: every rank yields exactly ``floor(total / world_size)`` items per epoch (a ``BadItem`` counts
as an item). The shards, in an order shuffled per epoch (training) or in index order (validation), form one stream
of ``total`` samples; rank r reads the r-th contiguous block of that many samples, and its data-loader workers split
that block into contiguous parts of near-equal size. Shards therefore need not divide evenly among ranks (one shard
is enough), and each sample is read at most once per epoch; the ``total % world_size`` samples at the end of the
stream are skipped, different ones each epoch. With the same batch size and worker count on every rank (as DDP
requires anyway), every rank gets the same number of batches (``batches_per_rank``). A shard that cannot be read
(unreachable, truncated, cut off mid-transfer) yields a ``BadItem`` for each of its missing samples, so the counts
stay equal.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
from braceexpand import braceexpand
from PIL import Image
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator
from webdataset.writer import TarWriter

from ...checks import all_finite
from ...config import EquiAVConfig
from ...errors import DatasetError, ImageDecodeError, InvalidInputError, StorageError
from ...image import to_rgb
from ...parts import PartLedger, PartPlan, ShardSpan, merged
from ...storage import (
    TRANSFER_ERRORS,
    Folder,
    file_name,
    is_pipe,
    is_remote,
    join,
    open_read,
    protocol,
    read_json,
    replace_name,
)
from ..distributed import get_rank, get_world_size
from .config import DataConfig, check_split
from .items import BadItem, SharedEpoch, ViewMaker, item_failure, item_generator
from .mapped import RawSample, frame_choice

INDEX_FILE = "shards.json"
# Most shard names a brace pattern may expand to: a typo in a range (``{0..400000000}``) must not exhaust memory.
MAX_PATTERN_NAMES = 100_000
_RANGE = re.compile(r"\{(-?\d+|[A-Za-z])\.\.(-?\d+|[A-Za-z])(?:\.\.-?(\d+))?\}")
FORMAT = "equiav-shards"
VERSION = 1
AUDIO_FIELDS = (
    "sample_rate", "num_mel_bins", "target_length", "frame_shift_ms", "frame_length_ms", "audio_mean", "audio_std",
    "audio_normalization",
)  # fmt: skip
# Values of audio fields added after version 1 shards were first written; older indexes were written with these.
_AUDIO_FIELD_DEFAULTS = {"audio_normalization": "dataset"}
_FRAME_NAME = re.compile(r"^frame_(\d+)\.(jpg|jpeg|png)$")
SHARD_NAME = "shard-{:06d}.tar"
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
    """Writes one part of a shard job (``equiav.parts``) to a local folder or an object store.

    ``plan`` splits the source's items over parts and shards; ``meta`` (audio settings, frame count, label kind and
    number of classes, source) goes into the index and must be the same for every part and every resumed run.
    ``write(span, samples)`` writes one shard of ``RawSample`` s (``BadItem`` s are counted and listed, never
    stored), as ``NAME.partial`` moved into place when complete. ``finish()`` marks the part done and, when every
    part is, writes ``shards.json``. Refuses a folder that already holds an index.
    """

    def __init__(self, output: str | Path, plan: PartPlan, part: int, meta: dict[str, Any]) -> None:
        self.folder = Folder(output)
        if self.folder.exists(INDEX_FILE):
            raise DatasetError(f"{output} already holds shards ({INDEX_FILE}); choose another output folder")
        self.plan, self.part, self.meta = plan, part, meta
        self.ledger = PartLedger(self.folder, plan, part, meta)

    def pending(self) -> list[ShardSpan]:
        """The shards of this part still to write (all of them unless resuming)."""
        return self.ledger.pending()

    def write(self, span: ShardSpan, samples: Iterable[tuple[int, RawSample | BadItem]]) -> list[BadItem]:
        """Write shard ``span`` from (item number, sample) pairs; returns the bad items it skipped."""
        name = SHARD_NAME.format(span.number)
        bad: list[BadItem] = []
        count = 0
        with (
            self.folder.open_write(name) as stream,
            TarWriter(stream, encoder=False, mode=0o644, mtime=0) as tar,
        ):
            for index, sample in samples:
                if isinstance(sample, BadItem):
                    bad.append(sample)
                    continue
                tar.write(_tar_sample(index, sample))
                count += 1
        self.folder.commit(name)
        listed = [{"index": item.index, "path": item.path, "reason": item.reason} for item in bad]
        self.ledger.record(span, name, count, listed)
        return bad

    def finish(self) -> dict[str, Any] | None:
        """Mark this part done; the index once every part is done (it is then written), else None."""
        self.ledger.finish()
        parts = merged(self.folder, self.plan, self.meta)
        if parts is None:
            return None
        shards, bad = parts
        index = {
            "format": FORMAT,
            "version": VERSION,
            "total": sum(entry["count"] for entry in shards),
            "shards": [{"file": entry["file"], "count": entry["count"]} for entry in shards],
            **self.meta,
            "bad": len(bad),
            "bad_items": bad,
        }
        self.folder.write_json(INDEX_FILE, index)
        return index


def _tar_sample(index: int, sample: RawSample) -> dict[str, Any]:
    members: dict[str, Any] = {"__key__": f"{index:010d}", "fbank.npy": fbank_to_npy(sample.fbank)}
    for k, (extension, payload) in enumerate(sample.frames):
        members[f"frame_{k}.{extension}"] = payload
    members["json"] = json.dumps(sample.meta, sort_keys=True).encode()
    return members


def _pattern_names(spec: str) -> list[str]:
    """The names of a brace pattern, refused past ``MAX_PATTERN_NAMES``: its ranges are sized before expanding,
    since braceexpand holds each range in memory in full."""
    size = 1
    for start, end, step in _RANGE.findall(spec):
        first, last = (int(v) if v.lstrip("-").isdigit() else ord(v) for v in (start, end))
        size *= abs(last - first) // (int(step or 1) or 1) + 1
    names = list(islice(braceexpand(spec), MAX_PATTERN_NAMES + 1)) if size <= MAX_PATTERN_NAMES else []
    if size > MAX_PATTERN_NAMES or len(names) > MAX_PATTERN_NAMES:
        raise DatasetError(
            f"{spec}: the brace pattern names more than {MAX_PATTERN_NAMES} shards "
            "(equiav.training.datasets.shards.MAX_PATTERN_NAMES); check its ranges"
        )
    return names


class ShardIndex:
    """The shards to read (locations and sample counts) and the metadata of their ``shards.json``."""

    def __init__(self, shards: list[tuple[str, int]], meta: dict[str, Any]) -> None:
        self.shards = shards
        self.meta = meta
        self.total = sum(count for _, count in shards)

    @classmethod
    def load(cls, spec: str | Path) -> ShardIndex:
        """From a folder (local or a URL prefix) holding ``shards.json``, that file, or a brace / glob pattern of
        shards listed in the ``shards.json`` beside them (to read a subset, e.g. ``shards/shard-{000000..000009}.tar``).
        """
        spec = str(spec)
        if not is_remote(spec) and Path(spec).is_dir():
            return cls._from_location(join(spec, INDEX_FILE), selected=None)
        name = _file_name(spec)
        if name is None:
            if is_pipe(spec) or not is_remote(spec):
                raise DatasetError(f"{spec}: no shard folder, index or .tar file here")
            return cls._from_location(join(spec, INDEX_FILE), selected=None)
        if name.endswith(".json"):
            return cls._from_location(spec, selected=None)
        names = [found for pattern in _pattern_names(spec) for found in _glob(pattern)]
        if not names:
            raise DatasetError(f"{spec}: no shard file matches")
        indexes = sorted({replace_name(found, INDEX_FILE) for found in names})
        if len(indexes) != 1:
            raise DatasetError(f"{spec}: the matched shards must lie in one folder, found indexes {indexes}")
        return cls._from_location(indexes[0], selected={file_name(found) for found in names})

    @classmethod
    def _from_location(cls, location: str, selected: set[str] | None) -> ShardIndex:
        try:
            meta = read_json(location)
        except StorageError as error:
            raise DatasetError(
                f"cannot read the shard index: {error}; write shards with `python -m equiav.training.prepare shards`"
            ) from error
        if (
            not isinstance(meta, dict)
            or meta.get("format") != FORMAT
            or not isinstance(meta.get("shards"), list)
        ):
            raise DatasetError(f"{location}: not an equiav shard index (format {FORMAT!r})")
        listed = {entry["file"]: int(entry["count"]) for entry in meta["shards"]}
        if selected is not None:
            unknown = sorted(selected - set(listed))
            if unknown:
                raise DatasetError(f"{location}: shard(s) {unknown} are not listed in this index")
        shards = [
            (replace_name(location, name), count)
            for name, count in listed.items()
            if selected is None or name in selected
        ]
        if not shards or not sum(count for _, count in shards):
            raise DatasetError(f"{location}: the selected shards hold no samples")
        return cls(shards, meta)


def _file_name(spec: str) -> str | None:
    try:
        return file_name(spec)
    except StorageError:
        return None


def _glob(pattern: str) -> list[str]:
    """The shards a pattern names: local files that exist, or an object store's listing for a glob; other
    remote names (HTTP, pipes) as given."""
    if not any(char in pattern for char in "*?["):
        return [pattern] if is_remote(pattern) or Path(pattern).is_file() else []
    if is_pipe(pattern) or protocol(pattern) in ("http", "https"):
        raise DatasetError(f"{pattern}: a glob needs a listable location; use a {{000..009}} range")
    if not is_remote(pattern):
        path = Path(pattern)
        return sorted(str(p) for p in path.parent.glob(path.name) if p.is_file())
    fs, path = fsspec.core.url_to_fs(pattern)
    return sorted(fs.unstrip_protocol(found) for found in fs.glob(path))


def _samples_in(location: str, start: int, stop: int) -> Iterator[dict[str, bytes]]:
    """The members (by extension) of samples ``start`` .. ``stop - 1`` of a shard, read as a stream (earlier ones
    are read and dropped). Raises ``StorageError``, ``tarfile.TarError`` or a transfer error when the shard cannot
    be read to its end."""
    stream = open_read(location)
    complete = False  # all wanted samples read: a command cut off early may then exit with an error status
    try:
        files = ({**member, "__url__": location} for member in tar_file_iterator(stream))
        for position, sample in enumerate(group_by_keys(files)):
            complete = position + 1 >= stop
            if position >= start:
                yield sample
            if complete:
                return
        complete = True
    except GeneratorExit:
        complete = True
        raise
    finally:
        try:
            stream.close()
        except TRANSFER_ERRORS:
            if not complete:
                raise


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
            except (StorageError, tarfile.TarError, *TRANSFER_ERRORS) as error:
                reason = f"cannot read shard ({type(error).__name__}: {error})"
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
            if not all_finite(fbank):
                raise InvalidInputError("stored filterbank holds NaN or infinite values")
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
