"""``equiav demo``: hear a sound, find the matching picture, with the packaged model and demo set.

The demo set ships inside the package (``equiav/demo_data``): the ten digits spoken by three synthetic voices and
written by pen in three synthetic hands, made by ``scripts/make_demo_data.py``. Retrieval is zero-shot and class-level: a hit is a
best match showing the spoken digit. ``--audio`` / ``--image`` / ``--video`` run the same on your own files.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import torch

from .console import add_runtime_arguments, run_main, set_threads
from .retrieval import plot_similarity, ranks, short_name, summarize_ranks


def demo_set() -> tuple[list[Path], list[int], list[Path], list[int]]:
    """(audio files, their digits, image files, their digits) of the packaged demo set."""
    root = Path(str(resources.files("equiav") / "demo_data"))
    index = json.loads((root / "index.json").read_text())
    audio = [(root / item["path"], item["label"]) for item in index["audio"]]
    images = [(root / item["path"], item["label"]) for item in index["images"]]
    return [p for p, _ in audio], [y for _, y in audio], [p for p, _ in images], [y for _, y in images]


def print_table(
    queries: list[Path], gallery: list[Path], similarity: torch.Tensor, hits: list[bool] | None
) -> None:
    best = similarity.argmax(dim=1)
    header = f"{'query':<22}{'best match':<24}{'score':>7}" + ("  result" if hits is not None else "")
    print(header)
    print("-" * len(header))
    for i, query in enumerate(queries):
        line = f"{query.name[:21]:<22}{gallery[best[i]].name[:23]:<24}{similarity[i, best[i]].item():>7.3f}"
        if hits is not None:
            line += "  hit" if hits[i] else "  miss"
        print(line)


def run_direction(name, queries, gallery, similarity, query_labels, gallery_labels) -> float | None:
    print(f"\n{name}")
    if query_labels is None:
        print_table(queries, gallery, similarity, None)
        return None
    best = similarity.argmax(dim=1)
    hits = [query_labels[i] == gallery_labels[int(b)] for i, b in enumerate(best)]
    print_table(queries, gallery, similarity, hits)
    recall = summarize_ranks(ranks(similarity, query_labels, gallery_labels), ks=(1,))["R@1"] / 100.0
    print(f"R@1 = {recall:.3f} ({sum(hits)}/{len(hits)}; chance {1 / len(set(gallery_labels)):.2f})")
    return recall


def main(argv: list[str] | None = None) -> dict[str, float | None]:
    parser = argparse.ArgumentParser(prog="equiav demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="equiav-tiny-digits", help="registered name, directory or checkpoint"
    )
    parser.add_argument("--audio", nargs="+", default=None, help="your own audio files (queries)")
    parser.add_argument("--image", nargs="+", default=None, help="your own images (gallery)")
    parser.add_argument(
        "--video", nargs="+", default=None, help="videos: match their audio tracks to their frames"
    )
    parser.add_argument("--output", default="equiav_demo_similarity.png", help="PNG of the similarity matrix")
    add_runtime_arguments(parser)
    args = parser.parse_args(argv)

    from .model import EquiAVModel

    model = EquiAVModel.from_pretrained(args.model)
    threads = set_threads(args.threads, model.config.embed_dim)
    audio_labels = image_labels = None
    if args.video:
        videos = [Path(p) for p in args.video]
        embedded = model.embed_video(videos, num_threads=threads)
        audio_emb, image_emb, audio_files, image_files = embedded.audio, embedded.image, videos, videos
    else:
        if args.audio or args.image:
            if not (args.audio and args.image):
                parser.error("--audio and --image go together (queries and gallery)")
            audio_files, image_files = [Path(p) for p in args.audio], [Path(p) for p in args.image]
        else:
            audio_files, audio_labels, image_files, image_labels = demo_set()
            print(
                f"demo set: {len(audio_files)} spoken digits, {len(image_files)} digit images, model {args.model}"
            )
        audio_emb = model.embed_audio([str(p) for p in audio_files], num_threads=threads)
        image_emb = model.embed_image([str(p) for p in image_files], num_threads=threads)
    similarity = (audio_emb @ image_emb.T).float().cpu()
    results = {
        "audio_to_image_R@1": run_direction("audio -> image", audio_files, image_files, similarity, audio_labels,
                                            image_labels),
        "image_to_audio_R@1": run_direction("image -> audio", image_files, audio_files, similarity.T, image_labels,
                                            audio_labels),
    }  # fmt: skip
    print(f"\nwrote {write_plot(similarity, args, audio_files, image_files)}")
    return results


def write_plot(
    similarity: torch.Tensor, args: argparse.Namespace, audio: list[Path], images: list[Path]
) -> Path:
    """The similarity matrix as a labelled PNG at ``args.output``: audio file names on the rows, image (or video)
    file names on the columns."""
    gallery_name = "video frames" if args.video else "images"
    return plot_similarity(
        similarity,
        args.output,
        title=f"audio -> {gallery_name} similarity ({short_name(args.model)})",
        query_name="audio",
        gallery_name=gallery_name,
        query_labels=[path.name for path in audio],
        gallery_labels=[path.name for path in images],
    )


if __name__ == "__main__":
    run_main(main, "equiav demo")
