"""Builders of the bad-input corpus: every file is written into a temporary folder at test time, never committed.

Each helper makes one kind of file a user or a data set meets in practice (odd PCM formats, broken containers,
odd image modes, crafted weights, hub caches, manifests) from a few parameters, deterministically.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from PIL import Image

HOUR_SECONDS = 3600


# ----------------------------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------------------------


def tone(frequency: float, rate: int, seconds: float = 1.5) -> np.ndarray:
    """A decaying tone with one inharmonic partial (float64, peak below 0.7): stationary enough to compare
    filterbanks across rates and codecs, and not symmetric enough to be confused with another frequency."""
    time = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * frequency * time) * np.exp(-time) + 0.2 * np.sin(
        2 * np.pi * 2.5 * frequency * time
    )


def quantize(signal: np.ndarray, bits: int) -> np.ndarray:
    """``signal`` rounded to the grid of ``bits``-bit PCM (k / 2**(bits-1)), so a PCM file of it is lossless."""
    scale = float(2 ** (bits - 1))
    return np.clip(np.round(signal * scale), -scale, scale - 1) / scale


def write_audio(path: Path, data: np.ndarray, rate: int, subtype: str | None = None) -> Path:
    """``data`` (N,) or (N, C) written with libsndfile; the format comes from the extension."""
    soundfile.write(path, data, rate, subtype=subtype)
    return path


def can_write_mp3() -> bool:
    """Whether libsndfile has its MP3 encoder (libsndfile >= 1.1 with LAME)."""
    return "MP3" in soundfile.available_formats()


def write_mp3(path: Path, data: np.ndarray, rate: int) -> Path:
    """A real MP3 written by libsndfile's LAME encoder."""
    soundfile.write(path, data, rate, format="MP3")
    return path


def write_hour_wav(path: Path, rate: int = 16000) -> Path:
    """One hour of 16-bit mono audio: a one-second tone, then silence, streamed in one-minute blocks (about a second)."""
    silence = np.zeros(rate * 60, dtype=np.int16)
    with soundfile.SoundFile(path, "w", rate, 1, "PCM_16") as sink:
        sink.write((quantize(tone(440.0, rate, 1.0), 16) * 32768).astype(np.int16))
        for _ in range(HOUR_SECONDS // 60 - 1):
            sink.write(silence)
        sink.write(silence[: rate * 59])
    return path


# ----------------------------------------------------------------------------------------------------------------
# Byte-level damage
# ----------------------------------------------------------------------------------------------------------------


def truncate(path: Path, keep: int | float) -> Path:
    """Cut ``path`` to its first ``keep`` bytes (an int) or fraction of its bytes (a float), as an interrupted
    download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    return path


def text_file(path: Path, text: str = "this is a text file, not media\n" * 20) -> Path:
    """A text file under a media or weights file name."""
    path.write_text(text)
    return path


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def scramble(path: Path, start: int | float, length: int | None = None, seed: int = 0) -> Path:
    """Overwrite ``length`` bytes (default: to the end) from ``start`` (a byte offset, or a fraction of the size)
    with random bytes, as a bad disk or a broken transfer does."""
    data = bytearray(path.read_bytes())
    first = int(len(data) * start) if isinstance(start, float) else start
    last = len(data) if length is None else first + length
    data[first:last] = np.random.default_rng(seed).integers(0, 256, last - first, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def patch(path: Path, offset: int, replacement: bytes) -> Path:
    """Overwrite the bytes at ``offset`` with ``replacement`` (e.g. a header magic)."""
    data = bytearray(path.read_bytes())
    data[offset : offset + len(replacement)] = replacement
    path.write_bytes(bytes(data))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------


def pattern(height: int, width: int) -> np.ndarray:
    """A smooth RGB uint8 test picture (horizontal waves in red, a vertical ramp in green, a disc in blue) whose
    upside-down copy looks clearly different."""
    side = max(height, width)
    rows = (np.arange(height) / side)[:, None]
    cols = (np.arange(width) / side)[None, :]
    planes = [
        0.5 + 0.5 * np.sin(6 * cols),
        rows * side / height,
        (cols - 0.5) ** 2 + (rows - 0.3) ** 2 < 0.05,
    ]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    for channel, plane in enumerate(planes):
        rgb[..., channel] = np.round(255 * np.clip(plane, 0, 1))
    return rgb


def few_colors(height: int, width: int) -> np.ndarray:
    """An RGB uint8 picture of eight colors in stripes and a square, so a palette image of it is lossless."""
    colors = np.array(
        [[(i >> 2) * 255, ((i >> 1) & 1) * 255, (i & 1) * 200] for i in range(8)], dtype=np.uint8
    )
    index = (np.arange(width)[None, :] * 8 // width).repeat(height, axis=0)
    index[height // 4 : height // 2, width // 4 : width // 2] = 5
    return colors[index]


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header, with a valid CRC)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    body = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = body
    data[29:33] = struct.pack(">I", zlib.crc32(body))
    path.write_bytes(bytes(data))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------------------------


def write_video(
    path: Path, seconds: float = 1.0, color: tuple[int, int, int] | None = (40, 160, 220), audio: bool = True
) -> Path:
    """A small MPEG-4 file: 64x48 frames of one ``color`` at 10 fps (None: no video stream) and, with ``audio``,
    a 16 kHz AAC ``tone(440)`` soundtrack."""
    import av

    with av.open(str(path), "w") as container:
        streams = []
        if color is not None:
            video = container.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            picture = np.empty((48, 64, 3), dtype=np.uint8)
            picture[:] = color
            frames = [av.VideoFrame.from_ndarray(picture, format="rgb24") for _ in range(int(seconds * 10))]
            streams.append((video, frames))
        if audio:
            sound = container.add_stream("aac", rate=16000)
            samples = tone(440.0, 16000, seconds).astype(np.float32)
            chunks = []
            for start in range(0, samples.size, 1024):
                chunk = av.AudioFrame.from_ndarray(
                    samples[None, start : start + 1024], format="fltp", layout="mono"
                )
                chunk.sample_rate, chunk.pts, chunk.time_base = 16000, start, Fraction(1, 16000)
                chunks.append(chunk)
            streams.append((sound, chunks))
        for stream, frames in streams:
            for frame in [*frames, None]:
                for packet in stream.encode(frame):
                    container.mux(packet)
    return path


def write_video_with_sound(path: Path, codec: str, rate: int, layout: str, sample_format: str) -> Path:
    """A 1.3-s video (one black 64x48 MPEG-4 frame a tenth of a second) whose soundtrack is encoded with ``codec``
    from frames of ``sample_format`` (planar or packed), one tone per channel of ``layout`` (200, 300, ... Hz)."""
    import av

    channels = len(av.AudioLayout(layout).channels)
    time = np.arange(int(rate * 1.3)) / rate
    sound = np.stack([0.3 * np.sin(2 * np.pi * (200 + 100 * k) * time) for k in range(channels)])
    packed = not av.AudioFormat(sample_format).is_planar
    dtype = np.int16 if sample_format.startswith("s16") else np.float32
    scale = 32767 if dtype == np.int16 else 1
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream(codec, rate=rate, layout=layout)
        picture = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        chunks = []
        for start in range(0, sound.shape[1], 1024):
            block = (sound[:, start : start + 1024] * scale).astype(dtype)
            data = np.ascontiguousarray(block.T.reshape(1, -1) if packed else block)
            chunk = av.AudioFrame.from_ndarray(data, format=sample_format, layout=layout)
            chunk.sample_rate, chunk.pts, chunk.time_base = rate, start, Fraction(1, rate)
            chunks.append(chunk)
        for stream, frames in ((video, [picture] * 13), (audio, chunks)):
            for frame in [*frames, None]:
                for packet in stream.encode(frame):
                    container.mux(packet)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def authors_layout(state: dict[str, torch.Tensor], prefix: str = "__M__.") -> dict[str, torch.Tensor]:
    """A state dict as the authors' code saves it: ``prefix`` on every key and, beside every block's ``norm1`` /
    ``norm2``, the four per-modality LayerNorms (``norm1_a`` ... ``norm2_v``) their block class creates and never uses."""
    out = {prefix + key: value.clone() for key, value in state.items()}
    for key, value in state.items():
        if re.fullmatch(r"blocks_[av]\.\d+\.norm[12]\.(weight|bias)", key):
            block, norm, kind = key.rsplit(".", 2)
            for modality in ("a", "v"):
                out[f"{prefix}{block}.{norm}_{modality}.{kind}"] = torch.full_like(value, 0.5)
    return out


class RunsCode:
    """Pickles into a call of ``exec`` that writes ``marker``: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('code from a weights file ran')",)


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A ``torch.save`` checkpoint with real tensors and one object whose unpickling runs code."""
    torch.save(
        {"model": {"patch_embed_a.proj.weight": torch.zeros(2, 3, 4, 4), "hook": RunsCode(marker)}}, path
    )
    return path


def hub_cache_repo(cache: Path, repo_id: str, snapshots: dict[str, Path], refs: dict[str, str]) -> Path:
    """A Hugging Face hub cache entry (``models--owner--name``) as ``hf_hub_download`` leaves it: one folder per
    commit under ``snapshots`` (copied from the given folders) and ``refs`` naming commits."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for commit, source in snapshots.items():
        target = repo / "snapshots" / commit
        target.mkdir(parents=True)
        for item in source.iterdir():
            (target / item.name).write_bytes(item.read_bytes())
    (repo / "refs").mkdir(parents=True)
    for ref, commit in refs.items():
        (repo / "refs" / ref).write_text(commit)
    return repo


def edit_json(path: Path, **changes: Any) -> Path:
    """Set fields of a JSON object file (e.g. a config.json)."""
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------------------------------------------


def write_clip(root: Path, video_id: str, frames: int, seconds: float = 0.6) -> dict[str, str]:
    """A WAV and ``frames`` JPEG frames in the authors' layout (``frame_{k}/{id}.jpg``); returns its manifest row."""
    (root / "audio").mkdir(exist_ok=True)
    write_audio(root / "audio" / f"{video_id}.wav", tone(500.0, 16000, seconds).astype(np.float32), 16000)
    for k in range(frames):
        (root / f"frame_{k}").mkdir(exist_ok=True)
        Image.fromarray(pattern(48, 64)).save(root / f"frame_{k}" / f"{video_id}.jpg", quality=90)
    return {"video_id": video_id, "wav": f"audio/{video_id}.wav", "video_path": ".", "labels": "/m/dog"}


def write_manifest(path: Path, rows: list[Any]) -> Path:
    path.write_text(json.dumps({"data": rows}))
    return path


def write_label_csv(path: Path, mids: list[str]) -> Path:
    path.write_text("index,mid,display_name\n" + "".join(f"{i},{mid},{mid}\n" for i, mid in enumerate(mids)))
    return path
