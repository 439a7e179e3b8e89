"""Data loading throughput of the pretraining dataset: examples/s per worker, with N workers, and time per stage.

One example is what ``equiav.training.datasets`` gives the training loop: the decoded audio, its normalized filterbank,
a decoded frame, the original image view, the augmented audio and image views with their vectors, and 16 + 16 view
vectors for the centroid. Two sources are timed:

* ``manifest``: the authors' layout (``frame_{k}/{id}.jpg`` + 16 kHz WAV + JSON manifest), written first with
  ``python -m equiav.training.prepare extract`` from the videos, the WAV files then cut (or looped) to 10 s as
  AudioSet clips;
* ``videos``: the same videos decoded on the fly with PyAV (the start of each soundtrack and one frame, as the
  dataset reads them).

The videos are ``--videos`` (default: the shared ``data/av`` folder); with ``--videos synthetic``, or when the folder is
missing (e.g. on a GPU machine without the shared data), three synthetic 10-s videos are written with PyAV instead
(320 x 240 H.264 at 25 fps, one keyframe per clip with libx264's defaults, and 44.1 kHz stereo AAC). Per stage, the
script replays the dataset's own calls one stage at a time on the same files (single thread, as in a data-loader
worker) and names the slowest; for videos it also times the codec alone on the same frames (the floor of the frame
stage); per worker it times ``dataset[i]`` in this process; with N workers it times a ``DataLoader`` over ``--items``
examples (the workers' start-up excluded). The goal is 500 examples/s from 16 cores (one H100 at the paper's model
size).

    python benchmarks/bench_dataloading.py --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import torch
from common import (
    REPO_ROOT,
    add_common_arguments,
    print_header,
    time_call,
    use_repository_package,
    write_json,
)
from torch.utils.data import DataLoader

use_repository_package()

from equiav import EquiAVConfig  # noqa: E402
from equiav.audio import crop_samples, load_audio, waveform_to_fbank  # noqa: E402
from equiav.image import load_image, preprocess_image  # noqa: E402
from equiav.training.datasets import DataConfig, build_dataset, collate_items  # noqa: E402
from equiav.training.datasets.items import pil_to_unit_tensor  # noqa: E402
from equiav.training.datasets.sources import extraction_crop, frame_times  # noqa: E402
from equiav.training.prepare import main as prepare_main  # noqa: E402
from equiav.video import open_video, probe_video, read_video_audio  # noqa: E402

GOAL_EXAMPLES_PER_S = 500
GOAL_CORES = 16
CLIP_SECONDS = 10.0


# ---------------------------------------------------------------------------------------------------------------------
# Data


def shared_videos() -> Path:
    """The shared ``data/av`` folder (``$EQUIAV_SHARED`` or ``../shared`` beside the repository)."""
    return Path(os.environ.get("EQUIAV_SHARED", REPO_ROOT.parent / "shared")) / "data" / "av"


def write_synthetic_videos(folder: Path, count: int = 3, seconds: float = CLIP_SECONDS) -> Path:
    """``count`` H.264 (else MPEG-4) + AAC videos (320 x 240, 25 fps, 44.1 kHz stereo): moving gradients, chirps."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rate, fps = 44100, 25
    for number in range(count):
        with av.open(str(folder / f"synthetic_{number}.mp4"), "w") as container:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            video = container.add_stream(codec, rate=fps)
            video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
            audio = container.add_stream("aac", rate=rate, layout="stereo")
            y, x = np.mgrid[0:240, 0:320]
            for k in range(int(seconds * fps)):
                pixels = np.stack(
                    [(x + 4 * k) % 256, (y + 2 * k * (number + 1)) % 256, (x + y) % 256], axis=-1
                )
                frame = av.VideoFrame.from_ndarray(pixels.astype(np.uint8), format="rgb24")
                for packet in video.encode(frame):
                    container.mux(packet)
            t = np.arange(int(seconds * rate)) / rate
            wave = 0.2 * np.sin(2 * np.pi * (200 * (number + 1) + 300 * t) * t)
            block = 1024
            for start in range(0, len(wave) - block + 1, block):
                chunk = np.tile(wave[start : start + block].astype(np.float32), (2, 1))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = rate, start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for stream in (video, audio):
                for packet in stream.encode(None):
                    container.mux(packet)
    return folder


def write_synthetic_layout(root: Path, items: int, count: int = 3, frames: int = 10) -> Path:
    """The authors' layout without videos (when PyAV is missing): 10-s 16 kHz chirps and 224 x 224 JPEG frames."""
    from PIL import Image

    rows = []
    y, x = np.mgrid[0:224, 0:224]
    for number in range(count):
        video_id = f"synthetic_{number}"
        t = np.arange(int(CLIP_SECONDS * 16000)) / 16000
        wav = root / "audio" / f"{video_id}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(
            wav, 0.2 * np.sin(2 * np.pi * (200 * (number + 1) + 300 * t) * t), 16000, subtype="PCM_16"
        )
        for k in range(frames):
            pixels = np.stack([(x + 9 * k) % 256, (y + 5 * k * (number + 1)) % 256, (x + y) % 256], axis=-1)
            path = root / f"frame_{k}" / f"{video_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        rows.append({"video_id": video_id, "wav": str(wav), "video_path": str(root), "labels": ""})
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"data": [rows[i % count] for i in range(items)]}))
    return manifest


def build_manifest(videos: Path, root: Path, items: int) -> Path:
    """The authors' layout of ``videos`` under ``root`` with WAV files of exactly 10 s, and a manifest of ``items``
    rows that cycle through the videos."""
    extracted = root / "extracted"
    with contextlib.redirect_stderr(io.StringIO()):
        status = prepare_main(
            ["extract", "--videos", str(videos), "--output", str(extracted), "--workers", "1"]
        )
    if status:
        raise SystemExit(f"prepare extract failed on {videos} (status {status})")
    rows = json.loads((extracted / "manifest.json").read_text())["data"]
    for row in rows:
        waveform, rate = soundfile.read(row["wav"], dtype="float32")
        length = int(CLIP_SECONDS * rate)
        soundfile.write(row["wav"], np.resize(waveform, length), rate, subtype="PCM_16")
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"data": [rows[i % len(rows)] for i in range(items)]}))
    return manifest


# ---------------------------------------------------------------------------------------------------------------------
# Stages


def stage_runs(dataset, kind: str, cfg: EquiAVConfig) -> tuple[dict[str, Callable[[], object]], int]:
    """One callable per stage of ``dataset[i]``, each running that stage for every distinct file once, on inputs the
    earlier stages produced beforehand (the same calls as ``ManifestDataset`` / ``VideoDataset`` and ``ViewMaker``)."""
    views = dataset.views
    count = len({str(dataset.item_path(i)) for i in range(len(dataset))})
    indices = range(count)
    generator = torch.Generator().manual_seed(0)
    if kind == "manifest":
        entries = [dataset.entries[i] for i in indices]
        frame = dataset.data.frame_count // 2
        decode_audio = [lambda e=e: load_audio(e.wav) for e in entries]
        decode_frame = [lambda e=e: load_image(e.frame(frame)) for e in entries]
        waves = [load_audio(e.wav) for e in entries]
        waves = [(w[0] if w.shape[0] == 1 else w.mean(dim=0), rate) for w, rate in waves]
    else:
        paths = [dataset.entries[i].path for i in indices]
        seconds = crop_samples(cfg) / cfg.sample_rate
        decode_audio = [lambda p=p: read_video_audio(p, cfg.sample_rate, max_seconds=seconds) for p in paths]
        size = dataset.data.frame_size

        def frame_of(path: Path):
            with open_video(path) as video:
                times = frame_times(video.info(), dataset.data.frame_count, dataset.data.clip_seconds)
                [frame] = video.frames(times=[times[len(times) // 2]], short_side=size)
            return extraction_crop(frame, size)

        decode_frame = [lambda p=p: frame_of(p) for p in paths]
        waves = [(run(), cfg.sample_rate) for run in decode_audio]
    images = [run() for run in decode_frame]
    fbanks = [waveform_to_fbank(w, rate, cfg) for w, rate in waves]

    def audio_aug():
        for fbank in fbanks:
            params = views.audio.sample(generator)
            views.audio.apply(fbank, params), views.audio.vector(params)

    def visual_aug():
        for image in images:
            raw = pil_to_unit_tensor(image)
            params = views.visual.sample(generator, input_size=tuple(raw.shape[-2:]))
            (views.visual.apply(raw, params) - views._mean) / views._std, views.visual.vector(params)

    def view_vectors():
        for _ in images:
            (
                views.audio.sample_vectors(views.num_views, generator),
                views.visual.sample_vectors(views.num_views, generator),
            )

    return {
        "audio decode": lambda: [run() for run in decode_audio],
        "filterbank": lambda: [waveform_to_fbank(w, rate, cfg) for w, rate in waves],
        "frame decode": lambda: [run() for run in decode_frame],
        "original image view": lambda: [preprocess_image(image, cfg) for image in images],
        "audio augmentation": audio_aug,
        "visual augmentation": visual_aug,
        "view vectors (16 + 16)": view_vectors,
    }, count


def time_stages(dataset, kind: str, cfg: EquiAVConfig, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per example of each stage, printed with its share of their sum."""
    runs, count = stage_runs(dataset, kind, cfg)
    seconds = {name: time_call(run, repeats, warmup).median_wall / count for name, run in runs.items()}
    total = sum(seconds.values())
    for name, value in seconds.items():
        print(f"  {kind:>8} stage {name:>24}: {value * 1e3:8.2f} ms per example ({value / total:5.1%})")
    slowest = max(seconds, key=seconds.get)
    print(
        f"  {kind:>8} slowest stage: {slowest} ({seconds[slowest] * 1e3:.2f} ms of {total * 1e3:.2f} ms summed)"
    )
    return seconds


def decode_with_codec_alone(path: Path, time: float) -> None:
    """Decode the frame on screen at ``time`` with PyAV alone: seek to the keyframe before it and decode every frame
    up to it on one thread, with no frame skipped and no colour conversion."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.best("video")
        stream.codec_context.thread_count = 1
        container.seek(int(time / float(stream.time_base)), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time is not None and frame.time > time:
                return


def time_codec_floor(dataset, stages: dict[str, float], repeats: int, warmup: int) -> float:
    """Seconds per example of the frame stage's frames decoded by the codec alone, printed against the stage."""
    paths = sorted({dataset.entries[i].path for i in range(len(dataset))})
    data = dataset.data
    middles = [
        frame_times(probe_video(p), data.frame_count, data.clip_seconds)[data.frame_count // 2] for p in paths
    ]
    timing = time_call(
        lambda: [decode_with_codec_alone(p, t) for p, t in zip(paths, middles)], repeats, warmup
    )
    floor = timing.median_wall / len(paths)
    print(
        f"    videos frame decode by the codec alone (PyAV: seek, decode every frame up to it, 1 thread, no colour "
        f"conversion): {floor * 1e3:.2f} ms per example; the frame stage takes {stages['frame decode'] / floor:.2f}x that"
    )
    return floor


def time_worker(dataset, repeats: int, warmup: int) -> float:
    """Median seconds of one ``dataset[i]`` in this process, over the distinct files."""
    count = len({str(dataset.item_path(i)) for i in range(len(dataset))})
    timing = time_call(lambda: [dataset[i] for i in range(count)], repeats, warmup)
    return timing.median_wall / count


def time_loader(dataset, workers: int, items: int, batch_size: int) -> tuple[float, int]:
    """Examples/s of a ``DataLoader`` with ``workers`` processes, from its first batch on (start-up excluded)."""
    order = [i % len(dataset) for i in range(items)]
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=order, num_workers=workers, collate_fn=collate_items,
        prefetch_factor=4 if workers else None,
    )  # fmt: skip
    iterator = iter(loader)
    first = next(iterator)
    start, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += len(batch["index"])
    elapsed = time.perf_counter() - start
    del first
    return (seen / elapsed if elapsed > 0 else math.nan), seen


def data_sources(args: argparse.Namespace, root: Path, items: int) -> dict[str, DataConfig]:
    """The manifest layout and the video folder to read (synthetic when the videos or PyAV are missing)."""
    try:
        import av
    except ImportError:
        print("PyAV is not importable: timing a synthetic authors' layout only (no videos)")
        return {
            "manifest": DataConfig(kind="manifest", path=str(write_synthetic_layout(root / "layout", items)))
        }
    videos = args.videos or shared_videos()
    if str(videos) == "synthetic" or not videos.is_dir():
        print(
            f"videos: {videos}{'' if str(videos) == 'synthetic' else ' not found'}, writing synthetic 10-s videos"
        )
        try:
            videos = write_synthetic_videos(root / "videos")
        except (av.FFmpegError, ValueError) as error:
            print(f"PyAV could not write videos ({error}): timing a synthetic authors' layout only")
            return {
                "manifest": DataConfig(
                    kind="manifest", path=str(write_synthetic_layout(root / "layout", items))
                )
            }
    print(f"videos: {videos} ({', '.join(sorted(p.name for p in videos.iterdir()))})")
    return {
        "manifest": DataConfig(kind="manifest", path=str(build_manifest(videos, root / "layout", items))),
        "videos": DataConfig(kind="videos", path=str(videos)),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5, warmup=1, device=False)
    parser.add_argument("--preset", default="equiav-base", help="model preset whose inputs to make")
    parser.add_argument(
        "--videos",
        type=Path,
        default=None,
        help="folder of videos, or 'synthetic' for three written here (default: shared data/av, else synthetic)",
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=None, help="DataLoader workers (default: CPU count)"
    )
    parser.add_argument(
        "--items", type=int, default=None, help="examples per DataLoader run (default 48 per worker)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="DataLoader batch size (default 8)")
    parser.add_argument("--kinds", nargs="+", choices=("manifest", "videos"), default=["manifest", "videos"])
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.repeats, args.warmup, args.workers, args.items = "equiav-tiny", 1, 0, [2], 12
        args.batch_size = 2
    if args.workers is None:
        args.workers = [os.cpu_count() or 1]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or 1)  # the per-stage and per-worker numbers are single-threaded
    cfg = EquiAVConfig.from_preset(args.preset)
    settings = {
        "preset": args.preset,
        "kinds": args.kinds,
        "workers": args.workers,
        "batch size": args.batch_size,
        "repeats": args.repeats,
        "warm-up": args.warmup,
        "torch threads in this process": torch.get_num_threads(),
    }
    machine = print_header("data loading: pretraining examples per second", "cpu", settings)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="equiav-bench-data-") as temp:
        root = Path(temp)
        largest = max(args.workers)
        items = max(args.items or 48 * max(largest, 1), args.batch_size * (2 * largest + 2))
        sources = data_sources(args, root, items)
        for kind in [kind for kind in args.kinds if kind in sources]:
            dataset = build_dataset(sources[kind], cfg, "train")
            print(f"\n{kind}: {len(dataset)} items")
            stages = time_stages(dataset, kind, cfg, args.repeats, args.warmup)
            floor = time_codec_floor(dataset, stages, args.repeats, args.warmup) if kind == "videos" else None
            per_example = time_worker(dataset, args.repeats, args.warmup)
            per_worker = 1 / per_example
            print(
                f"  {kind:>8} the stages sum to {sum(stages.values()) * 1e3:.2f} ms of the {per_example * 1e3:.2f} ms "
                "of a whole item (the rest: item seeding, audio roll, and caches that stay warm stage by stage)"
            )
            print(f"  {kind:>8} one worker (this process, 1 thread): {per_example * 1e3:.2f} ms per example, "
                  f"{per_worker:.1f} examples/s; x{GOAL_CORES} workers if linear: {per_worker * GOAL_CORES:.0f} "
                  f"examples/s (goal {GOAL_EXAMPLES_PER_S} from {GOAL_CORES} cores)")  # fmt: skip
            loaders = {}
            for workers in args.workers:
                rate, seen = time_loader(dataset, workers, items, args.batch_size)
                loaders[workers] = rate
                print(f"  {kind:>8} DataLoader, {workers} workers: {rate:.1f} examples/s ({seen} examples timed); "
                      f"scaling {rate / per_worker:.2f}x one worker")  # fmt: skip
            results[kind] = {
                "stages_s": stages,
                "slowest_stage": max(stages, key=stages.get),
                "frame_decode_codec_alone_s": floor,
                "per_worker_examples_per_s": per_worker,
                "loader_examples_per_s": loaders,
            }
    print("\nfinal numbers need a quiet machine: compare the load average above with the logical CPU count")
    write_json(
        args.json, {"benchmark": "dataloading", "machine": machine, "settings": settings, "results": results}
    )


if __name__ == "__main__":
    main()
