"""Embed sounds and pictures with one model and print how similar every sound is to every picture.

    python examples/embed_and_compare.py --audio one.wav seven.flac --image digit1.png digit7.jpg

Without --audio / --image it compares the spoken digits and the digit images packaged with equiav. The model
maps both modalities into one space of L2-normalized vectors, so a dot product is a cosine similarity in [-1, 1].
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

import equiav

DEMO = Path(equiav.__file__).parent / "demo_data"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--audio", nargs="+", type=Path, help="audio files (default: 4 packaged spoken digits)"
    )
    parser.add_argument(
        "--image", nargs="+", type=Path, help="image files (default: 4 packaged digit images)"
    )
    parser.add_argument(
        "--model",
        default="equiav-tiny-digits",
        help="registered name, saved directory or hub id of the model",
    )
    parser.add_argument("--output", type=Path, help="also write the similarity table to this CSV file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Replace these with your own files; any audio format libsndfile reads and any image Pillow reads work.
    audio_files = args.audio or [DEMO / "audio" / f"{digit}_us.wav" for digit in range(4)]
    image_files = args.image or [DEMO / "images" / f"{digit}_upright.png" for digit in range(4)]

    model = equiav.EquiAVModel.from_pretrained(args.model).eval()
    audio = model.embed_audio([str(path) for path in audio_files])  # (A, D), one row per file
    images = model.embed_image([str(path) for path in image_files])  # (I, D)
    similarity: torch.Tensor = audio @ images.T  # (A, I) cosine similarities

    names = [path.name for path in image_files]
    width = max(len(name) for name in names + ["audio"]) + 2
    print(f"{'audio':<{width}}" + "".join(f"{name:>{width}}" for name in names))
    for path, row in zip(audio_files, similarity.tolist()):
        print(f"{path.name:<{width}}" + "".join(f"{value:>{width}.3f}" for value in row))
    for path, row in zip(audio_files, similarity):
        print(f"{path.name} sounds most like {names[int(row.argmax())]}")

    if args.output:
        with args.output.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["audio", *names])
            for path, row in zip(audio_files, similarity.tolist()):
                writer.writerow([path.name, *(f"{value:.6f}" for value in row)])
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
