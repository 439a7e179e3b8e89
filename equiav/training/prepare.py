"""Offline data preparation.

``extract`` decodes a folder or CSV of videos once into the authors' layout, so training reads small files
instead of decoding video::

    python -m equiav.training.prepare extract --videos DIR_OR_CSV --output DIR [--frames 10]

writes ``DIR/frame_{k}/{video_id}.jpg`` (short side resized to 224, center crop 224, as CAV-MAE),
``DIR/audio/{video_id}.wav`` (16 kHz mono, 16-bit) and ``DIR/manifest.json`` (``{"data": [{"video_id", "wav",
"video_path", "labels"}]}``, usable with ``DataConfig(kind="manifest")``).

``shards`` writes tar shards of decoded, un-augmented samples (see ``equiav.training.datasets.shards``) to a local
folder or an object store (``s3://bucket/shards`` with the ``remote`` extra)::

    python -m equiav.training.prepare shards --source manifest|videos|avdigits --input PATH --output DIR \
        --shard-size 1000 [--model equiav-base | --config config.json] [--label-csv CSV] [--split train] \
        [--part I --num-parts N]

The job splits into independent parts (``equiav.parts``): ``--part I --num-parts N`` (a job array, one part per
task) or, under ``torchrun``, one part per process (``RANK`` of ``WORLD_SIZE``). Each part writes its own shards,
skips the ones it finished before when run again, and the part that finishes last writes ``shards.json``.

Unreadable videos or samples are skipped, logged with their path and counted; the command exits with status 1
when more than ``--max-bad-fraction`` of them failed (what could be read is still written).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import soundfile
import torch
from tqdm import tqdm

from ..config import EquiAVConfig
from ..console import add_runtime_arguments, debugging, model_width, run_main, set_threads
from ..errors import EquiAVError
from ..parts import PartPlan, part_from_env
from ..video import open_video
from .datasets.avdigits import NUM_DIGITS
from .datasets.config import DataConfig
from .datasets.items import DECODE_ERRORS, BadItem
from .datasets.mapped import JPEG_QUALITY, PretrainDataset, RawSample
from .datasets.shards import INDEX_FILE, ShardWriter, audio_settings
from .datasets.sources import FRAME_SIZE, VideoEntry, extraction_crop, frame_times, list_videos

logger = logging.getLogger("equiav.data")

_TASK: Callable[[int], Any] | None = None


def _init_worker(task: Callable[[int], Any]) -> None:
    global _TASK
    _TASK = task
    torch.set_num_threads(1)


def _run_task(index: int) -> Any:
    return _TASK(index)


def map_indices(task: Callable[[int], Any], indices: Sequence[int], workers: int, desc: str) -> Iterator[Any]:
    """``task(i)`` for each of ``indices`` in order, in ``workers`` processes, with a progress bar."""
    if workers <= 1:
        results = map(task, indices)
        yield from tqdm(results, total=len(indices), desc=desc, unit="item")
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(task,)) as pool:
        results = pool.imap(_run_task, indices, chunksize=4)
        yield from tqdm(results, total=len(indices), desc=desc, unit="item")


class VideoExtractor:
    """Extracts one video: its ``frames`` CAV-MAE frames and its soundtrack; returns the manifest entry or a
    ``BadItem``."""

    def __init__(
        self,
        entries: list[VideoEntry],
        output: Path,
        frames: int,
        frame_size: int = FRAME_SIZE,
        clip_seconds: float = 10.0,
        sample_rate: int = 16000,
    ) -> None:
        self.entries, self.output = entries, output
        self.frames, self.frame_size = frames, frame_size
        self.clip_seconds, self.sample_rate = clip_seconds, sample_rate

    def __call__(self, index: int) -> dict[str, str] | BadItem:
        entry = self.entries[index]
        try:
            with open_video(entry.path) as video:
                waveform = video.audio(self.sample_rate)
                times = frame_times(video.info(), self.frames, self.clip_seconds)
                images = video.frames(times=times, short_side=self.frame_size)
        except DECODE_ERRORS as error:
            return BadItem(index, str(entry.path), str(error))
        for k, image in enumerate(images):
            folder = self.output / f"frame_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            extraction_crop(image, self.frame_size).save(
                folder / f"{entry.video_id}.jpg", quality=JPEG_QUALITY
            )
        wav = self.output / "audio" / f"{entry.video_id}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(wav, waveform.clamp(-1.0, 1.0).numpy(), self.sample_rate, subtype="PCM_16")
        return {
            "video_id": entry.video_id,
            "wav": str(wav.resolve()),
            "video_path": str(self.output.resolve()),
            "labels": entry.labels or "",
        }


class RawSampler:
    """``dataset.raw_sample(index)``, or a ``BadItem`` when the sample cannot be read."""

    def __init__(self, dataset: PretrainDataset) -> None:
        self.dataset = dataset

    def __call__(self, index: int) -> RawSample | BadItem:
        try:
            return self.dataset.raw_sample(index)
        except DECODE_ERRORS as error:
            return BadItem(index, self.dataset.item_path(index), str(error))


def _check_bad(bad: int, count: int, limit: float, what: str) -> int:
    """Log the summary; 1 (failure) when the bad fraction exceeds ``limit``."""
    logger.info("%s: %d of %d read, %d skipped", what, count - bad, count, bad)
    if count and bad / count > limit:
        logger.error(
            "%s: %d of %d (%.2f%%) could not be read, more than --max-bad-fraction %.2f%%",
            what, bad, count, 100 * bad / count, 100 * limit,
        )  # fmt: skip
        return 1
    return 0


def extract(args: argparse.Namespace) -> int:
    entries = list_videos(args.videos)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    task = VideoExtractor(entries, output, args.frames, args.frame_size, args.clip_seconds, args.sample_rate)
    rows, bad = [], 0
    for result in map_indices(task, range(len(entries)), args.workers, "extract"):
        if isinstance(result, BadItem):
            bad += 1
            logger.warning("skipped video %s: %s", result.path, result.reason)
        else:
            rows.append(result)
    manifest = output / args.manifest
    manifest.write_text(json.dumps({"data": rows}, indent=1) + "\n")
    logger.info("wrote %s (%d videos)", manifest, len(rows))
    return _check_bad(bad, len(entries), args.max_bad_fraction, "extract")


def _model_config(args: argparse.Namespace) -> EquiAVConfig:
    return EquiAVConfig.load(args.config) if args.config else EquiAVConfig.from_preset(args.model)


def write_shards(args: argparse.Namespace) -> int:
    from .datasets import build_dataset

    model = _model_config(args)
    data = DataConfig(
        kind=args.source,
        path=args.input,
        label_csv=args.label_csv,
        frame_count=args.frames,
        clip_seconds=args.clip_seconds,
        frame_size=args.frame_size,
        val_speakers=tuple(args.val_speakers),
        val_fraction_images=args.val_fraction_images,
        seed=args.seed,
    )
    split = args.split if args.source == "avdigits" else "train"
    dataset = build_dataset(data, model, split)
    if args.source == "avdigits":
        labels, classes = "single", NUM_DIGITS
    elif dataset.label_space is not None:
        labels, classes = "multi", dataset.label_space.num_classes
    else:
        labels, classes = "none", None
    meta = {
        "audio": audio_settings(model),
        "frames": args.frames,
        "labels": labels,
        "num_classes": classes,
        "source": args.source,
        "input": str(args.input),
        "split": split,
    }
    part, num_parts = part_from_env(args.part, args.num_parts)
    writer = ShardWriter(args.output, PartPlan(len(dataset), num_parts, args.shard_size), part, meta)
    pending = writer.pending()
    indices = [index for span in pending for index in range(span.start, span.stop)]
    done = sum(span.stop - span.start for span in writer.plan.shards(part)) - len(indices)
    if done:
        logger.info("part %d of %d: resuming, %d item(s) already in finished shards", part, num_parts, done)
    results = zip(
        indices, map_indices(RawSampler(dataset), indices, args.workers, f"shards {part + 1}/{num_parts}")
    )
    bad = 0
    for span in pending:
        for item in writer.write(span, islice(results, span.stop - span.start)):
            bad += 1
            logger.warning("skipped item %d (%s): %s", item.index, item.path, item.reason)
    index = writer.finish()
    logger.info("part %d of %d: wrote %d shard(s) to %s", part, num_parts, len(pending), args.output)
    if index is not None:
        logger.info("all parts done: %d samples in %d shard(s), index %s", index["total"], len(index["shards"]),
                    writer.folder.url(INDEX_FILE))  # fmt: skip
    return _check_bad(bad, len(indices), args.max_bad_fraction, f"shards part {part}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m equiav.training.prepare", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ext = commands.add_parser("extract", help="decode videos into frames, 16 kHz audio and a manifest")
    ext.add_argument("--videos", required=True, help="folder of videos, or CSV with a 'path' column")
    ext.add_argument("--output", required=True, help="output folder")
    ext.add_argument("--frames", type=int, default=10, help="frames per video (default 10)")
    ext.add_argument(
        "--frame-size", type=int, default=FRAME_SIZE, help="resize short side + crop (default 224)"
    )
    ext.add_argument(
        "--clip-seconds", type=float, default=10.0, help="take frames from the first N s (default 10)"
    )
    ext.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate (default 16000)")
    ext.add_argument("--manifest", default="manifest.json", help="manifest file name inside --output")

    shards = commands.add_parser("shards", help="write tar shards of decoded, un-augmented samples")
    shards.add_argument("--source", required=True, choices=("manifest", "videos", "avdigits"))
    shards.add_argument("--input", required=True, help="manifest JSON, video folder / CSV, or AV-digits root")
    shards.add_argument(
        "--output", required=True, help="output folder or object-store URL (no shards.json yet)"
    )
    shards.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    model = shards.add_mutually_exclusive_group()
    model.add_argument("--model", default="equiav-base", help="preset whose audio settings to use")
    model.add_argument("--config", help="config.json whose audio settings to use")
    shards.add_argument("--label-csv", help="class_labels_indices.csv to map manifest / CSV labels")
    shards.add_argument("--frames", type=int, default=10, help="frames (AV-digits: images) per sample")
    shards.add_argument("--clip-seconds", type=float, default=10.0, help="videos: frames from the first N s")
    shards.add_argument("--frame-size", type=int, default=FRAME_SIZE, help="videos: resize short side + crop")
    shards.add_argument("--split", choices=("train", "val"), default="train", help="AV-digits split")
    shards.add_argument("--val-speakers", nargs="+", default=["theo"], help="AV-digits validation speakers")
    shards.add_argument("--val-fraction-images", type=float, default=0.2, help="AV-digits held-out images")
    shards.add_argument("--seed", type=int, default=0, help="seed of the AV-digits image draws")
    shards.add_argument(
        "--part", type=int, help="this part's number, 0 .. N-1 (default: torchrun's RANK, or 0)"
    )
    shards.add_argument(
        "--num-parts", type=int, help="parts the job is split into (default: WORLD_SIZE, or 1)"
    )

    for sub in (ext, shards):
        add_runtime_arguments(sub)
        sub.add_argument("--workers", type=int, default=1, help="processes (default 1)")
        sub.add_argument(
            "--max-bad-fraction", type=float, default=0.01, help="fail above this (default 0.01)"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_threads(args.threads, model_width(getattr(args, "model", None)))
    try:
        return extract(args) if args.command == "extract" else write_shards(args)
    except EquiAVError as error:
        if debugging():
            raise
        logger.error("%s", error)
        return 2


if __name__ == "__main__":
    run_main(main, "python -m equiav.training.prepare")
