"""Class-level zero-shot retrieval on AV-digits: spoken digits against handwritten digit images, both ways.

    python examples/zero_shot_retrieval.py ../shared/data                      # held-out speaker theo
    python examples/zero_shot_retrieval.py my_digits/ --speakers nicolas lucas --plot similarity.png

ROOT holds FSDD-style recordings ``fsdd/recordings/{digit}_{speaker}_{take}.wav`` and ``mnist/mnist_4k.npz`` (uint8
``images`` and ``labels``). Queries are the recordings of --speakers and the held-out MNIST images (the same split the
trainer validates on, so a model trained on ROOT is scored on voices and handwriting it never saw). A hit is any
item of the same digit, so chance at R@1 is about 10 %.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import equiav
from equiav.retrieval import audio_visual_retrieval, format_table, plot_similarity, similarity_matrix
from equiav.training.datasets import avdigits_eval_set


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="AV-digits root (fsdd/recordings and mnist/mnist_4k.npz)")
    parser.add_argument("--model", default="equiav-tiny-digits", help="registered name or saved directory")
    parser.add_argument(
        "--speakers", nargs="+", default=["theo"], help="speakers to query with (default theo)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="recordings and images per digit (default: all of the split)"
    )
    parser.add_argument("--output", type=Path, help="write the metrics as JSON")
    parser.add_argument("--plot", type=Path, help="draw the image-to-audio similarity matrix to this PNG")
    return parser.parse_args()


@torch.no_grad()
def main() -> None:
    args = parse_args()
    model = equiav.EquiAVModel.from_pretrained(args.model).eval()

    # Un-augmented inputs, already preprocessed the way the model expects (its own mel bins, lengths, image size).
    fbanks, images, audio_labels, image_labels = avdigits_eval_set(
        args.root, model.config, "val", val_speakers=tuple(args.speakers), per_digit=args.limit
    )
    audio = model.encode_audio(fbanks)  # (N, D) inter-modal embeddings
    visual = model.encode_image(images)  # (M, D)

    results = audio_visual_retrieval(audio, visual, audio_labels, image_labels)
    print(f"{len(audio_labels)} recordings, {len(image_labels)} images; chance at R@1 is about 10 %")
    print(format_table(results, {"video_to_audio": "image -> audio", "audio_to_video": "audio -> image"}))

    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.output}")
    if args.plot:
        similarity = similarity_matrix(visual, audio)
        plot_similarity(
            similarity, args.plot, title="digit images vs spoken digits", query_name="image",
            gallery_name="audio", query_labels=image_labels.tolist(), gallery_labels=audio_labels.tolist(),
        )  # fmt: skip
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
