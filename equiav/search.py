"""Nearest-neighbour search over an embedded corpus (``equiav.corpus``) with FAISS (``pip install 'equiav[search]'``).

Embeddings are L2-normalized, so inner product is cosine similarity. Which index (``kind="auto"``):

* ``"flat"`` (exact inner product) up to ``EXACT_LIMIT`` vectors: no training, exact results, and a query over
  100,000 vectors of 512 floats is a few milliseconds of matrix product;
* ``"ivf"`` above it: an inverted file of ``sqrt(N)`` k-means cells trained on a sample of 64 per cell, searching
  ``nprobe`` cells per query. It builds in seconds even for millions of vectors, keeps the vectors exact (scores of the hits
  are true cosines), and ``nprobe`` trades latency for recall (``benchmarks/bench_search.py`` measures both);
* ``"hnsw"`` on request: a graph index with lower latency at equal recall, but a build that takes minutes per
  million vectors and more memory.

``SearchIndex`` holds one modality's index and ids; ``Searcher`` embeds query files (audio, image or video) with
the corpus's model and searches the audio or image index, e.g. a sound over the image index (cross-modal).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .corpus import load_embeddings, load_index, modality_of, model_fingerprint
from .errors import IndexMismatchError, InvalidInputError, StorageError
from .model import EquiAVModel
from .storage import Folder, is_remote, join, read_bytes

EXACT_LIMIT = 100_000
KINDS = ("auto", "flat", "ivf", "hnsw")
DEFAULT_NPROBE = 32
HNSW_NEIGHBOURS = 32


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError("equiav search needs FAISS: pip install 'equiav[search]'") from error
    return faiss


def choose_kind(count: int, kind: str = "auto") -> str:
    """The index kind for ``count`` vectors (see the module)."""
    if kind not in KINDS:
        raise InvalidInputError(f"index kind must be one of {KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    return "flat" if count <= EXACT_LIMIT else "ivf"


def build_faiss(vectors: np.ndarray, kind: str = "auto", *, nprobe: int = DEFAULT_NPROBE, seed: int = 0):
    """A FAISS inner-product index over ``vectors`` (N, D) float32."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count, dim = vectors.shape
    kind = choose_kind(count, kind)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = 128
    else:
        cells = max(1, min(int(math.sqrt(count)), count // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(count, size=min(count, 64 * cells), replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = min(nprobe, cells)
    index.add(vectors)
    return index


@dataclass(frozen=True)
class Hit:
    """One result: the item's id and its cosine similarity to the query."""

    id: str
    score: float


class SearchIndex:
    """A FAISS index over one modality of an embedded corpus, with the ids of its rows and the corpus's model."""

    def __init__(self, index: Any, ids: list[str], modality: str, meta: dict[str, Any]) -> None:
        self.index, self.ids, self.modality, self.meta = index, ids, modality, meta

    @classmethod
    def build(cls, corpus: str | Path, modality: str, kind: str = "auto") -> SearchIndex:
        """Build the index of ``modality`` (``"audio"`` or ``"image"``) over the corpus embedded at ``corpus``."""
        embeddings, meta = load_embeddings(corpus, modality)
        if not embeddings.ids:
            raise InvalidInputError(f"{corpus}: the corpus holds no {modality} embedding")
        index = build_faiss(embeddings.vectors.numpy(), kind)
        return cls(
            index, embeddings.ids, modality, {**meta, "index_kind": choose_kind(len(embeddings.ids), kind)}
        )

    @classmethod
    def load_or_build(cls, corpus: str | Path, modality: str, kind: str = "auto") -> SearchIndex:
        """The index saved beside the corpus (``search-MODALITY.faiss``) when it is there, else a new one (saved
        when the corpus folder is writable)."""
        faiss = _faiss()
        corpus = str(corpus)
        name = f"search-{modality}.faiss"
        meta = load_index(corpus)
        try:
            saved = json.loads(read_bytes(join(corpus, name + ".json")))
        except (StorageError, json.JSONDecodeError):
            saved = None
        if (
            saved is not None
            and saved["model_fingerprint"] == meta["model_fingerprint"]
            and kind in ("auto", saved["index_kind"])
        ):
            index = faiss.deserialize_index(np.frombuffer(read_bytes(join(corpus, name)), dtype=np.uint8))
            return cls(index, saved["ids"], modality, {**meta, "index_kind": saved["index_kind"]})
        built = cls.build(corpus, modality, kind)
        if not is_remote(corpus) or corpus.startswith(("s3://", "gs://", "memory://")):
            built.save(corpus)
        return built

    def save(self, corpus: str | Path) -> None:
        """Save the index and its ids beside the corpus."""
        folder = Folder(corpus)
        name = f"search-{self.modality}.faiss"
        folder.write_bytes(name, _faiss().serialize_index(self.index).tobytes())
        sidecar = {key: self.meta[key] for key in ("model", "model_fingerprint", "index_kind")}
        folder.write_json(name + ".json", {**sidecar, "ids": self.ids})

    def search(self, queries: torch.Tensor | np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The ``k`` nearest items (highest cosine) of each query row (Q, D)."""
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.index.d))
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        scores, rows = self.index.search(queries, min(k, len(self.ids)))
        return [
            [Hit(self.ids[row], float(score)) for row, score in zip(row_list, score_list) if row >= 0]
            for row_list, score_list in zip(rows, scores)
        ]


def _other(modality: str) -> str:
    return "image" if modality == "audio" else "audio"


class Searcher:
    """Answers queries by file over an embedded corpus: ``search(path, by=..., target=..., k=...)``.

    The model is the corpus's (its registered name or path as stored in ``embeddings.json``) unless one is given;
    a model other than the one that embedded the corpus is refused (``IndexMismatchError``).
    """

    def __init__(self, corpus: str | Path, model: EquiAVModel | None = None, kind: str = "auto") -> None:
        self.corpus, self.kind = str(corpus), kind
        self.meta = load_index(corpus)
        self.model = model if model is not None else EquiAVModel.from_pretrained(self.meta["model"])
        fingerprint = model_fingerprint(self.model)
        if fingerprint != self.meta["model_fingerprint"]:
            raise IndexMismatchError(
                f"{self.corpus}: embedded with model {self.meta['model']!r} (fingerprint "
                f"{self.meta['model_fingerprint']}), but the query model {self.model.config.name!r} has fingerprint "
                f"{fingerprint}; query with the same model or embed the corpus again"
            )
        self._indexes: dict[str, SearchIndex] = {}

    def index(self, modality: str) -> SearchIndex:
        if modality not in self._indexes:
            self._indexes[modality] = SearchIndex.load_or_build(self.corpus, modality, self.kind)
        return self._indexes[modality]

    def embed(self, path: str | Path) -> dict[str, torch.Tensor]:
        """The query's embeddings by modality: ``audio``, ``image``, or both for a video."""
        modality = modality_of(str(path))
        if modality is None:
            raise InvalidInputError(
                f"{path}: cannot tell the modality from its extension (audio, image or video)"
            )
        if modality == "audio":
            return {"audio": self.model.embed_audio(str(path))[0]}
        if modality == "image":
            return {"image": self.model.embed_image(str(path))[0]}
        video = self.model.embed_video(str(path))
        return {"audio": video.audio[0], "image": video.image[0]}

    def search(
        self, path: str | Path, *, by: str | None = None, target: str | None = None, k: int = 10
    ) -> list[Hit]:
        """The ``k`` corpus items nearest to the query file.

        ``by``: which embedding of the query (default: its only one; a video's soundtrack). ``target``: which
        index (default: the other modality, cross-modal; ``by`` for same-modality search).
        """
        embeddings = self.embed(path)
        by = by or ("audio" if "audio" in embeddings else "image")
        if by not in embeddings:
            raise IndexMismatchError(f"{path}: has no {by} embedding (it has {sorted(embeddings)})")
        target = target or _other(by)
        return self.index(target).search(embeddings[by], k)[0]


def format_table(query: str, hits: list[Hit]) -> str:
    """Hits as a text table."""
    width = max([len(hit.id) for hit in hits] + [2])
    lines = [f"query: {query}", f"{'rank':>4}  {'id':<{width}}  score"]
    lines += [f"{rank:>4}  {hit.id:<{width}}  {hit.score:.4f}" for rank, hit in enumerate(hits, 1)]
    return "\n".join(lines)


__all__ = ["EXACT_LIMIT", "Hit", "SearchIndex", "Searcher", "build_faiss", "choose_kind", "format_table"]
