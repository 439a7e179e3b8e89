"""Where clips come from: the authors' JSON manifests, folders or CSVs of videos, and their frame layout."""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ...errors import DatasetError, VideoDecodeError
from ...image import resized_size

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ogv")
# CAV-MAE's extract_video_frame.py saves Resize(224) + CenterCrop(224) frames; EquiAV trained on those.
FRAME_SIZE = 224


@dataclass(frozen=True)
class ManifestEntry:
    """One row of the authors' manifest: audio file, frame folder (``frame_{k}/{video_id}.jpg``) and labels.

    Paths are kept as strings (the frame folder shared between rows) to keep million-row manifests small.
    """

    video_id: str
    wav: str
    video_path: str
    labels: str | None

    def frame(self, k: int) -> Path:
        return Path(self.video_path, f"frame_{k}", f"{self.video_id}.jpg")


@dataclass(frozen=True)
class VideoEntry:
    """One video file to decode on the fly, with its id (file stem by default) and optional labels."""

    path: Path
    video_id: str
    labels: str | None


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Rows of ``{"data": [{"video_id", "wav", "video_path", "labels"}, ...]}``; relative paths are taken from
    the manifest's folder. ``labels`` (comma-separated ids) may be missing."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read manifest JSON ({error})") from error
    rows = document.get("data") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not rows:
        raise DatasetError(f"{path}: manifest must be an object whose 'data' is a non-empty list of entries")
    base = path.parent
    entries = []
    for number, row in enumerate(rows):
        where = f"{path}, entry {number}"
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected an object, got {type(row).__name__}")
        missing = [key for key in ("video_id", "wav", "video_path") if not isinstance(row.get(key), str)]
        if missing:
            raise DatasetError(f"{where}: missing or non-string field(s) {missing}")
        labels = row.get("labels")
        if labels is not None and not isinstance(labels, str):
            raise DatasetError(f"{where}: 'labels' must be a comma-separated string, got {labels!r}")
        wav, folder = str(_resolve(row["wav"], base)), sys.intern(str(_resolve(row["video_path"], base)))
        entries.append(ManifestEntry(row["video_id"], wav, folder, labels))
    return entries


def list_videos(path: str | Path) -> list[VideoEntry]:
    """Videos of a folder (recursively, by extension, sorted) or of a CSV with a ``path`` column and optional
    ``video_id`` and ``labels`` columns (relative paths are taken from the CSV's folder)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        entries = [VideoEntry(p, p.stem, None) for p in files]
    elif path.is_file():
        entries = _read_video_csv(path)
    else:
        raise DatasetError(f"{path}: no such video folder or CSV")
    if not entries:
        raise DatasetError(f"{path}: no videos found (extensions {', '.join(VIDEO_EXTENSIONS)})")
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.video_id in seen:
            raise DatasetError(
                f"{path}: video id {entry.video_id!r} is used by both {seen[entry.video_id]} and {entry.path}; "
                "ids name the extracted files, so give unique ids in a CSV column 'video_id'"
            )
        seen[entry.video_id] = entry.path
    return entries


def _read_video_csv(path: Path) -> list[VideoEntry]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{path}: cannot read video CSV ({error})") from error
    if not rows or "path" not in rows[0]:
        raise DatasetError(f"{path}: video CSV needs a header row with a 'path' column")
    entries = []
    for line, row in enumerate(rows, start=2):
        if not row["path"]:
            raise DatasetError(f"{path}, line {line}: empty 'path'")
        video = _resolve(row["path"], path.parent)
        entries.append(VideoEntry(video, row.get("video_id") or video.stem, row.get("labels")))
    return entries


def extraction_crop(image: Image.Image, size: int = FRAME_SIZE) -> Image.Image:
    """CAV-MAE's saved frame: the short side resized to ``size`` (bicubic), then a centered ``size`` square."""
    width, height = image.size
    new_height, new_width = resized_size(height, width, size)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def frame_times(info: dict[str, Any], count: int, clip_seconds: float) -> list[float]:
    """Times (s) of the ``count`` frames CAV-MAE extracts: frame numbers ``max(int(i * N / count) - 1, 0)`` over the
    first ``N = min(frame count, fps * clip_seconds)`` frames, each aimed at the middle of its display interval.
    Without a known frame rate the first ``clip_seconds`` are cut into ``count`` equal segments instead."""
    duration = info.get("duration")
    if not info.get("has_video"):
        raise VideoDecodeError("the file has no video stream")
    fps = info.get("fps")
    if fps:
        available = info.get("num_frames") or (round(duration * fps) if duration else 0)
        total = min(available, int(fps * clip_seconds))
        if total < 1:
            raise VideoDecodeError("the video stream holds no frames")
        times = [(max(int(i * total / count) - 1, 0) + 0.5) / fps for i in range(count)]
    elif duration and math.isfinite(duration):
        span = min(duration, clip_seconds)
        times = [(i + 0.5) * span / count for i in range(count)]
    else:
        raise VideoDecodeError("the video has neither a frame rate nor a duration")
    return [min(t, duration) if duration else t for t in times]
