"""``equiav index build`` (embed a corpus, alone or under torchrun) and ``equiav search`` (nearest neighbours of
query files), registered in the ``equiav.commands`` entry-point group.

    equiav index build CORPUS --output EMB [--model NAME] [--batch-size 32] [--num-workers 2] [--shard-size 1000]
    torchrun --nproc-per-node 8 -m equiav index build CORPUS --output s3://bucket/emb      # one part per process
    equiav search EMB QUERY... [--by audio|image] [--target audio|image] [-k 10] [--json] [--index-kind auto]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .cli import Command
from .errors import EquiAVError

logger = logging.getLogger("equiav.corpus")


def _index_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equiav index", description="embed a corpus of media files")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="embed a folder, manifest or tar shards into embedding shards")
    build.add_argument(
        "corpus", help="folder, manifest (.txt/.csv/.json) or tar shards (path, URL, pipe:, {a..b})"
    )
    build.add_argument("--output", required=True, help="output folder or object-store URL")
    build.add_argument("--model", default="equiav-tiny-digits", help="registered name, directory or hub id")
    build.add_argument("--batch-size", type=int, default=32, help="items per forward pass (default 32)")
    build.add_argument("--num-workers", type=int, default=0, help="decoding processes per part (default 0)")
    build.add_argument("--shard-size", type=int, default=1000, help="files per output shard (default 1000)")
    build.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="auto: bf16 autocast on CUDA, fp32 on CPU")  # fmt: skip
    build.add_argument("--part", type=int, help="this part, 0 .. N-1 (default: torchrun's RANK, or 0)")
    build.add_argument("--num-parts", type=int, help="parts of the job (default: WORLD_SIZE, or 1)")
    build.add_argument("--max-bad-fraction", type=float, default=0.01, help="fail above this (default 0.01)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def index_main(argv: list[str] | None = None) -> None:
    import torch

    from .corpus import EmbedConfig, embed_corpus, list_corpus, part_of_job
    from .model import EquiAVModel

    args = _index_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        part, num_parts, device = part_of_job(args.part, args.num_parts)
        torch.set_grad_enabled(False)
        model = EquiAVModel.from_pretrained(args.model, device=device).eval()
        options = EmbedConfig(args.batch_size, args.num_workers, args.shard_size, args.precision,
                              args.max_bad_fraction, not args.no_progress)  # fmt: skip
        report = embed_corpus(model, list_corpus(args.corpus), args.output, model_name=args.model,
                              part=part, num_parts=num_parts, options=options)  # fmt: skip
    except EquiAVError as error:
        raise SystemExit(f"equiav index: {type(error).__name__}: {error}") from None
    seen = report.embedded + len(report.bad)
    print(f"part {part + 1}/{num_parts}: embedded {report.embedded} item(s), {len(report.bad)} unreadable")
    if report.index is not None:
        print(f"all parts done: {report.index['total']} item(s) in {len(report.index['shards'])} shard(s), "
              f"{report.index['bad']} unreadable, index {args.output}")  # fmt: skip
    if seen and len(report.bad) / seen > args.max_bad_fraction:
        raise SystemExit(
            f"equiav index: {len(report.bad)} of {seen} items unreadable, more than --max-bad-fraction"
        )


def _search_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equiav search", description="nearest corpus items of query files")
    parser.add_argument("corpus", help="an embedded corpus (the --output of `equiav index build`)")
    parser.add_argument("queries", nargs="+", help="audio, image or video files")
    parser.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--by", choices=("audio", "image"), help="query embedding (default: a video's audio)")
    parser.add_argument(
        "--target", choices=("audio", "image"), help="index to search (default: the other one)"
    )
    parser.add_argument("--model", help="query model (default: the one that embedded the corpus)")
    parser.add_argument("--index-kind", choices=("auto", "flat", "ivf", "hnsw"), default="auto",
                        help="auto: exact up to 100,000 vectors, IVF above")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser


def search_main(argv: list[str] | None = None) -> None:
    from .model import EquiAVModel
    from .search import Searcher, format_table

    args = _search_parser().parse_args(argv)
    try:
        model = EquiAVModel.from_pretrained(args.model) if args.model else None
        searcher = Searcher(args.corpus, model, kind=args.index_kind)
        results = {
            query: searcher.search(query, by=args.by, target=args.target, k=args.k) for query in args.queries
        }
    except EquiAVError as error:
        raise SystemExit(f"equiav search: {type(error).__name__}: {error}") from None
    if args.json:
        document = {
            query: [{"id": hit.id, "score": hit.score} for hit in hits] for query, hits in results.items()
        }
        json.dump(document, sys.stdout, indent=1)
        print()
    else:
        print("\n\n".join(format_table(query, hits) for query, hits in results.items()))


INDEX_COMMAND = Command(
    help="embed a corpus (`equiav index build ...`, alone or under torchrun)", main=index_main
)
SEARCH_COMMAND = Command(help="nearest corpus items of audio, image or video files (FAISS)", main=search_main)
