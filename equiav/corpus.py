"""Embed a corpus of media files at scale: alone or under torchrun, across processes and nodes, resumable.

Inputs (``list_corpus``): a folder (audio, image and video files, recursively), a manifest (a ``.txt`` of paths, a
``.csv`` with a ``path`` column and an optional ``id`` column, or a JSON list or ``{"data": [...]}`` of entries with
``path`` or the authors' ``wav``, and ``id`` / ``video_id``), or tar shards of media files (WebDataset layout
``KEY.wav``, ``KEY.jpg``, ``KEY.mp4``, ...; local, URL or ``pipe:``, brace patterns allowed). An audio file gives an
audio embedding, an image an image embedding, a video both (its soundtrack and its middle frame) under one id.

The job (``embed_corpus``) is split into independent parts (``equiav.parts``): part ``RANK`` of ``WORLD_SIZE`` under
torchrun, or ``part`` of ``num_parts`` in a job array, each on its own device. A part decodes its items in data-loader
workers, embeds them in batches (bf16 autocast on GPUs), and writes ``emb-NNNNNN.safetensors`` shards (``audio`` and
``image`` matrices of L2-normalized rows, their ids in the metadata); a part run again skips its finished shards.
Unreadable files are counted, logged and listed in the index, never embedded as zeros. The part that finishes last
writes ``embeddings.json``: the model's name and fingerprint, the dimension, the shards and the bad items.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from braceexpand import braceexpand
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .errors import (
    AudioDecodeError,
    DatasetError,
    ImageDecodeError,
    InvalidInputError,
    StorageError,
    VideoDecodeError,
)
from .model import EquiAVModel
from .parts import PartLedger, PartPlan, ShardSpan, merged
from .storage import TRANSFER_ERRORS, Folder, is_remote, open_read, read_bytes, read_json

logger = logging.getLogger("equiav.corpus")

INDEX_FILE = "embeddings.json"
FORMAT = "equiav-embeddings"
SHARD_NAME = "emb-{:06d}.safetensors"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}
DECODE_ERRORS = (AudioDecodeError, ImageDecodeError, VideoDecodeError, InvalidInputError, OSError)


def modality_of(name: str) -> str | None:
    """``"audio"``, ``"image"`` or ``"video"`` from a file name's extension, or None."""
    suffix = Path(name).suffix.lower()
    for modality, suffixes in (
        ("audio", AUDIO_SUFFIXES),
        ("image", IMAGE_SUFFIXES),
        ("video", VIDEO_SUFFIXES),
    ):
        if suffix in suffixes:
            return modality
    return None


@dataclass(frozen=True)
class CorpusItem:
    """One media file to embed: its id, where it is (a path, or the bytes of a tar member) and its modality."""

    id: str
    source: str | bytes
    modality: str
    suffix: str = ""


@dataclass(frozen=True)
class Corpus:
    """What a job embeds: files (one item each) or tar shards (one unit each, expanded when read)."""

    spec: str
    files: list[CorpusItem] | None = None
    tars: list[str] | None = None

    @property
    def units(self) -> int:
        return len(self.files) if self.files is not None else len(self.tars)

    def items(self, span: ShardSpan) -> tuple[list[CorpusItem], list[dict[str, Any]]]:
        """The items of a span of units, and the bad ones (unreadable tars) found while listing them."""
        if self.files is not None:
            return self.files[span.start : span.stop], []
        items, bad = [], []
        for location in self.tars[span.start : span.stop]:
            read, problem = _tar_items(location)
            items += read
            if problem:
                bad.append({"id": location, "reason": problem})
        return items, bad


def list_corpus(spec: str | Path) -> Corpus:
    """The corpus of a folder, a manifest or tar shards (see the module)."""
    spec = str(spec)
    if spec.endswith(".tar") or is_remote(spec):
        return Corpus(spec, tars=list(braceexpand(spec)))
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and modality_of(p.name))
        items = [CorpusItem(str(p.relative_to(path)), str(p), modality_of(p.name)) for p in files]
    elif path.is_file():
        items = _manifest_items(path)
    else:
        raise DatasetError(f"{spec}: no folder, manifest or .tar shards here")
    if not items:
        raise DatasetError(f"{spec}: holds no audio, image or video file")
    return Corpus(spec, files=items)


def _manifest_items(path: Path) -> list[CorpusItem]:
    root = path.parent
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "path" not in rows[0]:
            raise DatasetError(f"{path}: a CSV manifest needs a 'path' column, found {sorted(rows[0])}")
        entries = [(row.get("id") or row["path"], row["path"]) for row in rows]
    elif path.suffix.lower() == ".json":
        try:
            document = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetError(f"{path}: not valid JSON ({error})") from error
        rows = document.get("data", []) if isinstance(document, dict) else document
        entries = []
        for number, row in enumerate(rows):
            if isinstance(row, str):
                row = {"path": row}
            file = row.get("path") or row.get("wav") if isinstance(row, dict) else None
            if not file:
                raise DatasetError(f"{path}: entry {number} has no 'path' (or 'wav') field")
            entries.append((str(row.get("id") or row.get("video_id") or file), file))
    else:
        lines = [line.strip() for line in path.read_text().splitlines()]
        entries = [(line, line) for line in lines if line and not line.startswith("#")]
    items = []
    for item_id, file in entries:
        modality = modality_of(file)
        if modality is None:
            raise DatasetError(f"{path}: cannot tell the modality of {file} from its extension")
        items.append(CorpusItem(item_id, str(root / file), modality))
    return items


def _tar_items(location: str) -> tuple[list[CorpusItem], str | None]:
    """The media members of a tar (id ``KEY``), and why it could not be read to its end (or None)."""
    from webdataset.tariterators import tar_file_iterator

    items: list[CorpusItem] = []
    try:
        with open_read(location) as stream:
            for member in tar_file_iterator(stream):
                key, _, extension = member["fname"].rpartition("/")[2].partition(".")
                modality = modality_of(f"x.{extension}")
                if modality is not None:
                    items.append(
                        CorpusItem(key, member["data"], modality, "." + extension.rsplit(".", 1)[-1])
                    )
    except (StorageError, tarfile.TarError, *TRANSFER_ERRORS) as error:
        return (
            items,
            f"{location}: cannot read the tar after {len(items)} member(s) ({type(error).__name__}: {error})",
        )
    return items, None


@dataclass
class Decoded:
    """Model inputs of one item (``fbank`` (T, F) and/or ``pixels`` (3, S, S)), or why it failed."""

    item_id: str
    fbank: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    error: str | None = None


class _Decoding(Dataset):
    """Decodes items in data-loader workers, each into model inputs or an error (never raised)."""

    def __init__(self, items: list[CorpusItem], model: EquiAVModel) -> None:
        self.items, self.config = items, model.config

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded:
        item = self.items[index]
        try:
            if isinstance(item.source, bytes):
                with tempfile.NamedTemporaryFile(suffix=item.suffix) as handle:
                    handle.write(item.source)
                    handle.flush()
                    return self._decode(item, handle.name)
            return self._decode(item, item.source)
        except DECODE_ERRORS as error:
            where = item.source if isinstance(item.source, str) else item.id
            return Decoded(item.id, error=f"{where}: {type(error).__name__}: {error}")

    def _decode(self, item: CorpusItem, path: str) -> Decoded:
        from .audio import audio_input_to_fbanks, crop_samples
        from .image import preprocess_images

        if item.modality == "audio":
            return Decoded(item.id, fbank=audio_input_to_fbanks(path, None, self.config, "crop")[0])
        if item.modality == "image":
            return Decoded(item.id, pixels=preprocess_images([path], self.config)[0])
        from .video import open_video

        rate = self.config.sample_rate
        with open_video(path) as video:
            waveform = video.audio(rate, max_seconds=crop_samples(self.config) / rate)
            frames = video.frames(num_frames=1)
        fbank = audio_input_to_fbanks(waveform, rate, self.config, "crop")[0]
        return Decoded(item.id, fbank=fbank, pixels=preprocess_images(frames, self.config)[0])


def model_fingerprint(model: EquiAVModel) -> str:
    """A hash of the model's config and weights: an index built with another model is refused by it."""
    digest = hashlib.sha256(model.config.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class EmbedConfig:
    """Options of the embedding job.

    * ``batch_size``: items per forward pass; ``num_workers``: decoding processes per part.
    * ``shard_size``: files per output shard (tar inputs: one output shard per input tar).
    * ``precision``: ``"auto"`` (bf16 autocast on CUDA, fp32 elsewhere), ``"fp32"`` or ``"bf16"``.
    * ``max_bad_fraction``: the job reports failure past this fraction of unreadable items.
    """

    batch_size: int = 32
    num_workers: int = 0
    shard_size: int = 1000
    precision: str = "auto"
    max_bad_fraction: float = 0.01
    progress: bool = True


@dataclass
class EmbedReport:
    """What one part did: items embedded, items skipped as unreadable, and the index once all parts are done."""

    embedded: int
    bad: list[dict[str, Any]]
    index: dict[str, Any] | None


def embed_corpus(
    model: EquiAVModel,
    corpus: Corpus,
    output: str | Path,
    *,
    model_name: str,
    part: int = 0,
    num_parts: int = 1,
    options: EmbedConfig | None = None,
) -> EmbedReport:
    """Embed ``part`` of ``num_parts`` of ``corpus`` into ``output`` (a local folder or an object store)."""
    options = options or EmbedConfig()
    folder = Folder(output)
    if folder.exists(INDEX_FILE):
        raise DatasetError(f"{output} already holds embeddings ({INDEX_FILE}); choose another output folder")
    shard_size = options.shard_size if corpus.files is not None else 1
    plan = PartPlan(corpus.units, num_parts, shard_size)
    fingerprint = model_fingerprint(model)
    settings = {"format": FORMAT, "input": corpus.spec, "model": model_name, "model_fingerprint": fingerprint}
    ledger = PartLedger(folder, plan, part, settings)
    pending = ledger.pending()
    autocast = _autocast(model.device, options.precision)
    bar = tqdm(
        total=sum(span.stop - span.start for span in pending),
        desc=f"embed part {part + 1}/{num_parts}",
        unit="clip" if corpus.files is not None else "tar",
        disable=not options.progress,
    )
    embedded, bad = 0, []
    for span in pending:
        items, shard_bad = corpus.items(span)
        tensors, ids, embedded_ids = {}, {}, set()
        for modality, rows, row_ids, failed in _embed_items(model, items, options, autocast):
            tensors[modality], ids[f"{modality}_ids"] = rows, json.dumps(row_ids)
            embedded_ids.update(row_ids)
            shard_bad += failed
        for entry in shard_bad:
            logger.warning("skipped %s", entry["reason"])
        name = SHARD_NAME.format(span.number)
        folder.write_bytes(name, save_safetensors(tensors, metadata=ids))
        count = len(embedded_ids)
        ledger.record(span, name, count, shard_bad)
        embedded += count
        bad += shard_bad
        bar.update(span.stop - span.start)
    bar.close()
    ledger.finish()
    index = _merge(folder, plan, settings, model)
    return EmbedReport(embedded, bad, index)


def _autocast(device: torch.device, precision: str):
    if precision not in ("auto", "fp32", "bf16"):
        raise InvalidInputError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    enabled = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _embed_items(
    model, items, options, autocast
) -> Iterator[tuple[str, torch.Tensor, list[str], list[dict]]]:
    """Per modality: (L2-normalized rows, their ids, bad items) of the items that decode."""
    loader = DataLoader(
        _Decoding(items, model),
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=list,
    )
    rows: dict[str, list[torch.Tensor]] = {"audio": [], "image": []}
    ids: dict[str, list[str]] = {"audio": [], "image": []}
    failed = []
    with torch.no_grad():
        for batch in loader:
            failed += [{"id": d.item_id, "reason": d.error} for d in batch if d.error]
            for modality, field, encode in (
                ("audio", "fbank", model.encode_audio),
                ("image", "pixels", model.encode_image),
            ):
                good = [d for d in batch if getattr(d, field) is not None]
                if good:
                    inputs = torch.stack([getattr(d, field) for d in good]).to(model.device)
                    with autocast():
                        rows[modality].append(F.normalize(encode(inputs).float(), dim=-1).cpu())
                    ids[modality] += [d.item_id for d in good]
    dim = model.config.inter_proj_dim
    for number, modality in enumerate(("audio", "image")):
        matrix = torch.cat(rows[modality]) if rows[modality] else torch.zeros(0, dim)
        yield modality, matrix.contiguous(), ids[modality], failed if number == 0 else []


def _merge(
    folder: Folder, plan: PartPlan, settings: dict[str, Any], model: EquiAVModel
) -> dict[str, Any] | None:
    parts = merged(folder, plan, settings)
    if parts is None:
        return None
    shards, bad = parts
    index = {
        **settings,
        "version": 1,
        "dim": model.config.inter_proj_dim,
        "total": sum(entry["count"] for entry in shards),
        "shards": [{"file": entry["file"], "count": entry["count"]} for entry in shards],
        "bad": len(bad),
        "bad_items": bad,
    }
    folder.write_json(INDEX_FILE, index)
    return index


@dataclass
class Embeddings:
    """The embeddings of one modality of a corpus: ``ids`` and their rows of ``vectors`` (N, D), float32."""

    ids: list[str]
    vectors: torch.Tensor


def load_index(location: str | Path) -> dict[str, Any]:
    """The ``embeddings.json`` of an embedded corpus (a folder or URL)."""
    from .storage import join

    location = str(location)
    path = location if location.endswith(".json") else join(location, INDEX_FILE)
    try:
        index = read_json(path)
    except StorageError as error:
        raise DatasetError(f"{error}; embed the corpus first with `equiav index build`") from error
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DatasetError(f"{path}: not an embedded corpus (format {FORMAT!r})")
    return index


def load_embeddings(location: str | Path, modality: str) -> tuple[Embeddings, dict[str, Any]]:
    """All ``modality`` (``"audio"`` or ``"image"``) embeddings of a corpus, and its index."""
    from .storage import join

    if modality not in ("audio", "image"):
        raise InvalidInputError(f"modality must be 'audio' or 'image', got {modality!r}")
    index = load_index(location)
    ids, parts = [], []
    for entry in index["shards"]:
        where = join(str(location), entry["file"])
        payload = read_bytes(where)
        tensors = load_safetensors(payload)
        metadata = _safetensors_metadata(payload)
        parts.append(tensors[modality])
        ids += json.loads(metadata[f"{modality}_ids"])
    vectors = torch.cat(parts) if parts else torch.zeros(0, index["dim"])
    return Embeddings(ids, vectors), index


def _safetensors_metadata(payload: bytes) -> dict[str, str]:
    header_size = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8 : 8 + header_size]).get("__metadata__", {})


def part_of_job(part: int | None = None, num_parts: int | None = None) -> tuple[int, int, torch.device]:
    """(part, num_parts, device) of this process: torchrun's rank and local GPU when launched by it."""
    from .parts import part_from_env

    part, num_parts = part_from_env(part, num_parts)
    if torch.cuda.is_available():
        return part, num_parts, torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return part, num_parts, torch.device("cpu")


__all__ = [
    "INDEX_FILE",
    "Corpus",
    "CorpusItem",
    "EmbedConfig",
    "EmbedReport",
    "Embeddings",
    "embed_corpus",
    "list_corpus",
    "load_embeddings",
    "load_index",
    "model_fingerprint",
    "part_of_job",
]
