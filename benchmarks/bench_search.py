"""The corpus embedding job and FAISS search: clips/s of one process of ``equiav index build``, and query latency and
recall@10 of the approximate index against exact search on a synthetic corpus.

Embedding: ``--clips`` spoken digits (FSDD, 8 kHz WAV) and as many handwritten digits (MNIST, PNG) from the shared
data, embedded by ``embed_corpus`` in one process (decoding included), with the packaged ``equiav-tiny-digits`` model
and a randomly initialized ``equiav-base`` (the paper's size; weights do not change the speed).

Search: ``--vectors`` unit vectors of ``--dim`` floats drawn around ``--clusters`` centres (embeddings of real corpora
cluster; uniform random vectors are the worst case of every approximate index), ``--queries`` held-out queries
searched one at a time. Exact: ``IndexFlatIP``. Approximate: what ``kind="auto"`` picks above 100,000 vectors
(IVF-Flat with sqrt(N) cells) at several ``nprobe``, and with ``--hnsw`` an HNSW graph too (slow to build).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_arguments, apply_threads, print_header, use_repository_package  # noqa: E402

use_repository_package()

from equiav import EquiAVConfig, EquiAVModel  # noqa: E402
from equiav.corpus import EmbedConfig, embed_corpus, list_corpus  # noqa: E402
from equiav.search import build_faiss  # noqa: E402


def write_digits_corpus(root: Path, shared: Path, clips: int) -> Path:
    """``clips`` FSDD recordings and ``clips`` MNIST images as PNG files under ``root``."""
    from PIL import Image

    folder = root / "corpus"
    folder.mkdir()
    recordings = sorted((shared / "data" / "fsdd" / "recordings").glob("*.wav"))[:clips]
    for path in recordings:
        (folder / path.name).write_bytes(path.read_bytes())
    images = np.load(shared / "data" / "mnist" / "mnist_4k.npz")["images"][:clips]
    for number, pixels in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (folder / f"mnist_{number:05d}.png").write_bytes(buffer.getvalue())
    return folder


def embedding_rate(model: EquiAVModel, folder: Path, output: Path, batch_size: int) -> tuple[float, int]:
    """(clips/s, clips) of one run of the embedding job over ``folder``."""
    corpus = list_corpus(folder)
    options = EmbedConfig(batch_size=batch_size, shard_size=1000, progress=False)
    start = time.perf_counter()
    report = embed_corpus(model, corpus, output, model_name=model.config.name, options=options)
    return report.embedded / (time.perf_counter() - start), report.embedded


def clustered_vectors(count: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    vectors = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):
        stop = min(start + 100_000, count)
        chunk = centres[rng.integers(0, clusters, stop - start)]
        chunk += 0.5 * rng.standard_normal(chunk.shape, dtype=np.float32)
        vectors[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


def per_query(index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """(median seconds per single query, ids (Q, k))."""
    times, found = [], []
    for row in queries:
        start = time.perf_counter()
        _, ids = index.search(row[None], k)
        times.append(time.perf_counter() - start)
        found.append(ids[0])
    return float(np.median(times)), np.stack(found)


def recall_at(exact: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(exact, found)]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, repeats=1, warmup=0, device=False)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--clips", type=int, default=200, help="audio clips and images each (default 200)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--vectors", type=int, default=1_000_000, help="synthetic corpus size (default 1,000,000)"
    )
    parser.add_argument("--dim", type=int, default=512, help="embedding size (default 512, equiav-base)")
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--hnsw", action="store_true", help="also build an HNSW index (minutes per million)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.vectors, args.clusters, args.queries, args.nprobe = 4, 20_000, 100, 20, [8]
    apply_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    print_header("corpus embedding and search", "cpu", vars(args))

    torch.set_grad_enabled(False)
    models = {"equiav-tiny-digits": EquiAVModel.from_pretrained("equiav-tiny-digits")}
    if not args.quick:
        models["equiav-base (random weights)"] = EquiAVModel(EquiAVConfig.from_preset("equiav-base"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_digits_corpus(Path(tmp), args.shared, args.clips)
        for number, (name, model) in enumerate(models.items()):
            rate, clips = embedding_rate(model.eval(), folder, Path(tmp) / f"emb{number}", args.batch_size)
            print(
                f"embedding job, one process, {name}: {rate:.1f} clips/s ({clips} clips, decoding included)"
            )

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    vectors = clustered_vectors(args.vectors + args.queries, args.dim, args.clusters, rng)
    corpus, queries = vectors[: args.vectors], vectors[args.vectors :]
    print(f"synthetic corpus: {args.vectors} x {args.dim} in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    exact_index = build_faiss(corpus, "flat")
    print(f"exact (IndexFlatIP) build: {time.perf_counter() - start:.1f} s")
    exact_latency, exact = per_query(exact_index, queries, 10)
    print(f"exact: {1000 * exact_latency:.2f} ms per query")
    del exact_index
    variants = [("ivf", nprobe) for nprobe in args.nprobe] + ([("hnsw", None)] if args.hnsw else [])
    built = {}
    for kind, nprobe in variants:
        if kind not in built:
            start = time.perf_counter()
            built[kind] = build_faiss(corpus, kind)
            print(f"{kind} build: {time.perf_counter() - start:.1f} s")
        index = built[kind]
        if nprobe is not None:
            index.nprobe = nprobe
        latency, found = per_query(index, queries, 10)
        label = f"{kind} nprobe {nprobe}" if nprobe else kind
        print(
            f"{label}: {1000 * latency:.3f} ms per query, recall@10 {recall_at(exact, found):.3f}, "
            f"{exact_latency / latency:.1f}x faster than exact"
        )


if __name__ == "__main__":
    main()
