"""Fine-tune a classifier on a folder of labelled videos, then predict the class of new clips.

    python examples/finetune_classifier.py my_videos/ --output-dir runs/my-classifier

my_videos/ holds one subfolder per class (``my_videos/dog/a.mp4``, ``my_videos/siren/b.webm``, ...); the folder
names are the labels. Every fifth clip of each class (--val-fraction; at least one) is held out for validation. The classifier
starts from a pretrained EquiAV model (--backbone) and trains a linear head on its audio and visual towers
(--mode audio_visual; audio or visual for one modality) through ``equiav.training.finetune``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from equiav import EquiAVClassifier
from equiav.audio import waveform_to_fbank
from equiav.training.datasets import DataConfig
from equiav.training.finetune import FinetuneConfig, FinetuneOptimConfig, finetune
from equiav.video import read_video_audio, read_video_frames

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder with one subfolder of videos per class")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/finetune-videos"), help="run folder")
    parser.add_argument("--backbone", default="equiav-tiny-digits", help="pretrained model to start from")
    parser.add_argument("--mode", default="audio_visual", choices=["audio_visual", "audio", "visual"])
    parser.add_argument(
        "--epochs", type=float, default=10.0, help="passes over the training clips (default 10)"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (quick runs)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per step (default 32)")
    parser.add_argument(
        "--lr", type=float, default=1e-4, help="peak learning rate of the towers (default 1e-4)"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="clips per class held out (default 0.2)"
    )
    parser.add_argument("--num-workers", type=int, default=4, help="video decoding processes (default 4)")
    return parser.parse_args()


def write_csvs(data: Path, out: Path, val_fraction: float) -> tuple[Path, Path, Path, list[Path]]:
    """labels.csv (the classes) and train.csv / val.csv (path, video_id, labels) from the class subfolders."""
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    every = max(round(1 / val_fraction), 2)
    rows: dict[str, list[dict[str, str]]] = {"train": [], "val": []}
    for name in classes:
        clips = sorted(p for p in (data / name).rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        if len(clips) < 2:
            raise SystemExit(f"{data / name}: needs at least 2 videos (training and validation)")
        held_out = set(clips[every - 1 :: every] or clips[-1:])
        for clip in clips:
            split = "val" if clip in held_out else "train"
            # Ids must be unique across the folder; the path relative to it is.
            video_id = str(clip.relative_to(data).with_suffix("")).replace("/", "__")
            rows[split].append({"path": str(clip.resolve()), "video_id": video_id, "labels": name})
    labels = out / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([index, name, name] for index, name in enumerate(classes))
    paths = {}
    for split, split_rows in rows.items():
        paths[split] = out / f"{split}.csv"
        with paths[split].open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "video_id", "labels"])
            writer.writeheader()
            writer.writerows(split_rows)
    return labels, paths["train"], paths["val"], [Path(row["path"]) for row in rows["val"]]


def main() -> None:
    args = parse_args()
    labels, train_csv, val_csv, val_clips = write_csvs(args.data, args.output_dir / "data", args.val_fraction)

    # The run's options are the fields of FinetuneConfig (the same as `python -m equiav.training.finetune --help`).
    cfg = FinetuneConfig(
        data=DataConfig(kind="videos", path=str(train_csv), val_path=str(val_csv), label_csv=str(labels)),
        backbone=args.backbone,
        mode=args.mode,
        task="single_label",
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        optim=FinetuneOptimConfig(lr=args.lr, head_lr_scale=10.0),
        output_dir=str(args.output_dir),
        num_workers=args.num_workers,
        progress=sys.stderr.isatty(),
    )
    result = finetune(cfg)
    print(f"validation: {json.dumps(result['val'])}")

    # The exported classifier keeps the label names; give it a clip's soundtrack and middle frame.
    classifier = EquiAVClassifier.from_pretrained(args.output_dir / "final").eval()
    config = classifier.config.backbone
    for clip in val_clips[:5]:
        fbank = waveform_to_fbank(read_video_audio(clip, config.sample_rate), config.sample_rate, config)
        frame = read_video_frames(clip)[0]
        (best, score), *_ = classifier.predict(audio=fbank[None], image=[frame], top_k=1)[0]
        print(f"{clip.parent.name}/{clip.name}: predicted {best} ({score:.2f})")


if __name__ == "__main__":
    main()
