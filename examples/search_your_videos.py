"""Make a folder of videos searchable by sound: embed every clip once, then find the clips that match a query.

    python examples/search_your_videos.py my_videos/ --query dog_bark.wav
    python examples/search_your_videos.py my_videos/ --query clip.mp4 --target audio   # clips that sound alike

The first run embeds each video's soundtrack and middle frame into --index (resumable: an interrupted run continues
where it stopped); later runs reuse it. A sound searches the frames by default (cross-modal), an image the
soundtracks. For millions of files run the same job under torchrun or as a job array (see README "From one machine
to many"); equiav.search picks exact search up to 100,000 vectors and an IVF index above.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import equiav
from equiav.corpus import INDEX_FILE, EmbedConfig, embed_corpus, list_corpus
from equiav.search import Searcher, format_table


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "videos", type=Path, help="folder of videos (searched recursively; audio and images too)"
    )
    parser.add_argument(
        "--query", type=Path, required=True, help="an audio, image or video file to search with"
    )
    parser.add_argument(
        "--index",
        type=Path,
        default=Path("video-index"),
        help="folder for the embeddings (default: video-index)",
    )
    parser.add_argument("--model", default="equiav-tiny-digits", help="registered name or saved directory")
    parser.add_argument(
        "--target",
        choices=["audio", "image"],
        help="which index to search (default: the other modality than the query's)",
    )
    parser.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per forward pass (default 32)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model = equiav.EquiAVModel.from_pretrained(args.model).eval()

    # 1. Embed the corpus once. Each video gives an audio row and an image row under the same id (its path
    #    relative to the folder); unreadable files are listed in embeddings.json instead of stopping the job.
    if not (args.index / INDEX_FILE).exists():
        options = EmbedConfig(batch_size=args.batch_size, progress=sys.stderr.isatty())
        report = embed_corpus(
            model, list_corpus(args.videos), args.index, model_name=args.model, options=options
        )
        print(f"embedded {report.embedded} files into {args.index} ({len(report.bad)} unreadable)")
        for item in report.bad:
            print(f"  skipped {item['id']}: {item['reason']}")

    # 2. Search. Searcher refuses a model other than the one that embedded the index, so queries and index agree.
    searcher = Searcher(args.index, model=model)
    # A video query searches with its soundtrack (by="image" for its frame).
    hits = searcher.search(args.query, target=args.target, k=args.k)
    print(format_table(str(args.query), hits))


if __name__ == "__main__":
    main()
