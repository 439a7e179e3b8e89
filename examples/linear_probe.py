"""Linear probe: how much class information a frozen model's features hold, on your own labelled files.

    python examples/linear_probe.py my_sounds/                      # stratified 20 % test split
    python examples/linear_probe.py train_sounds/ --test-dir test_sounds/ --model runs/my-run/final

A labelled folder has one subfolder per class (``my_sounds/dog/*.wav``, ``my_sounds/siren/*.wav``) of audio files
or of images (the extension decides which tower). Features are the mean of a tower's final-normed patch tokens; the probe is
``equiav.training.probe.linear_probe``: standardized features, L2-regularized logistic regression, the L2 strength
picked on a held-out part of the training files. Hold out whole speakers or recording sessions in --test-dir when
your files have them, or the score measures memorized voices rather than classes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import equiav
from equiav.audio import load_fbank
from equiav.corpus import modality_of
from equiav.image import preprocess_image
from equiav.training.probe import linear_probe, stratified_split


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_dir", type=Path, help="labelled folder: one subfolder of files per class")
    parser.add_argument(
        "--test-dir", type=Path, help="labelled folder to score on (default: 20 %% of train_dir)"
    )
    parser.add_argument("--model", default="equiav-tiny-digits", help="registered name or saved directory")
    parser.add_argument("--limit", type=int, default=None, help="files per class and folder (default: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="files per forward pass (default 64)")
    return parser.parse_args()


def list_labelled(folder: Path, limit: int | None) -> tuple[list[Path], list[str]]:
    """Files of each class subfolder (the first ``limit`` of each) and their class names."""
    files, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        found = sorted(
            p for p in class_dir.rglob("*") if p.is_file() and modality_of(p.name) in ("audio", "image")
        )
        files += found[:limit]
        labels += [class_dir.name] * len(found[:limit])
    if not files:
        raise SystemExit(f"{folder}: no audio or image files in class subfolders")
    if len({modality_of(p.name) for p in files}) > 1:
        raise SystemExit(f"{folder}: holds both audio and images; probe one modality at a time")
    return files, labels


@torch.no_grad()
def features(model: equiav.EquiAVModel, files: list[Path], batch_size: int) -> torch.Tensor:
    """(N, D) mean patch tokens of the audio tower (audio files) or the image tower (images)."""
    rows = []
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        if modality_of(batch[0].name) == "audio":
            tokens = model.audio_tokens(torch.stack([load_fbank(p, model.config) for p in batch]))
        else:
            tokens = model.image_tokens(torch.stack([preprocess_image(p, model.config) for p in batch]))
        rows.append(tokens.mean(dim=1))
    return torch.cat(rows).double()


def main() -> None:
    args = parse_args()
    model = equiav.EquiAVModel.from_pretrained(args.model).eval()

    files, labels = list_labelled(args.train_dir, args.limit)
    classes = sorted(set(labels))
    x = features(model, files, args.batch_size)
    y = torch.tensor([classes.index(label) for label in labels])
    if args.test_dir:
        test_files, test_labels = list_labelled(args.test_dir, args.limit)
        test_x = features(model, test_files, args.batch_size)
        test_y = torch.tensor([classes.index(label) for label in test_labels])
    else:
        train_rows, test_rows = stratified_split(y, 0.2, seed=0)
        x, y, test_x, test_y = x[train_rows], y[train_rows], x[test_rows], y[test_rows]

    result = linear_probe(x, y, test_x, test_y)
    sizes = f"{result['num_train']} train / {result['num_val']} val / {result['num_test']} test"
    print(f"{len(classes)} classes, {sizes} files")
    accuracy, chance = result["test"]["acc"], 100 / len(classes)
    print(f"chosen l2 {result['l2']:g}; test accuracy {accuracy:.1f} % (chance {chance:.1f} %)")


if __name__ == "__main__":
    main()
