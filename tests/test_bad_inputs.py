"""The bad-input corpus: every file or value a user or a data set may throw at equiav, with its expected outcome.

``CASES`` is the one list of cases. Each maps an id to (run, expected): ``run(ctx)`` builds the input in a temporary
folder (see ``corpus.py``) and calls the public API on it; ``expected`` is

* ``Ok(check)``: the call returns, and ``check(result, ctx)`` asserts that the result is right (not just finite);
* ``Fails(error, pattern)``: the call raises ``error``, which must be an ``equiav.EquiAVError`` and a ``ValueError``
  or ``OSError``, and whose message must match ``pattern`` (which names the file or field; ``{dir}`` stands for the
  case's folder);
* ``Skipped(pattern)``: a data set returns a ``BadItem`` for the unreadable item (never zeros), whose path and reason
  match ``pattern``.

Cases that need more than one call (memory of an hour-long file, hub revisions, code in a weights file) follow the
table as their own tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cases import Ctx, Fails, Ok, Skipped, config_text, damaged_config, run_case
from corpus import (
    can_write_mp3,
    edit_json,
    empty_file,
    few_colors,
    hub_cache_repo,
    malicious_checkpoint,
    patch,
    pattern,
    png_claiming_size,
    quantize,
    scramble,
    text_file,
    tone,
    truncate,
    write_audio,
    write_clip,
    write_hour_wav,
    write_label_csv,
    write_manifest,
    write_mp3,
    write_video,
)
from PIL import Image
from safetensors.torch import load_file, save_file

import equiav
from equiav import (
    AudioDecodeError,
    CheckpointError,
    ConfigError,
    DatasetError,
    EquiAVError,
    EquiAVModel,
    ImageDecodeError,
    InvalidInputError,
    UnknownModelError,
    VideoDecodeError,
)
from equiav.audio import kaldi_fbank, load_audio, load_fbank, prepare_waveform, waveform_to_fbank
from equiav.convert import read_checkpoint
from equiav.training.datasets import BadItem, BadItemTracker, DataConfig, build_dataset, collate_items
from equiav.video import read_video_audio

pytestmark = pytest.mark.usefixtures("one_thread_module")
RATE = 16000
FRAMES = 2


# ------------------------------------------------------------------------------------------------------------------
# Checks of correct output
# ------------------------------------------------------------------------------------------------------------------

TONE = tone(1000.0, RATE)


def _close(result: torch.Tensor, reference: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(result, reference, rtol=0.0, atol=atol)


def _nearer(result: torch.Tensor, reference: torch.Tensor, other: torch.Tensor, ratio: float) -> None:
    """``result`` is within ``ratio`` of the distance that separates ``reference`` from a different input."""
    assert (result - reference).norm() < ratio * (other - reference).norm()


def _unit(result: torch.Tensor) -> None:
    assert torch.isfinite(result).all()
    _close(result.norm(dim=-1), torch.ones(result.shape[0]), atol=1e-5)


def _pcm_file(subtype: str, bits: int, extension: str = "wav") -> Callable[[Ctx], Any]:
    """A tone stored at ``bits`` of precision must embed exactly like the float64 array of the same values."""

    def run(ctx: Ctx) -> tuple[torch.Tensor, torch.Tensor]:
        values = quantize(TONE, bits)
        path = write_audio(ctx.path(f"tone_{subtype}.{extension}"), values, RATE, subtype)
        return ctx.model.embed_audio(path), ctx.embed_wave(values)

    return run


def _same_pair(atol: float = 1e-5) -> Ok:
    return Ok(lambda pair, ctx: _close(pair[0], pair[1], atol))


def _channels_file(channels: int) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> tuple[torch.Tensor, torch.Tensor]:
        values = quantize(TONE, 24)
        path = write_audio(
            ctx.path(f"copies{channels}.wav"), np.repeat(values[:, None], channels, 1), RATE, "PCM_24"
        )
        return ctx.model.embed_audio(path), ctx.embed_wave(values)

    return run


def _rate_file(rate: int) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> tuple[torch.Tensor, np.ndarray]:
        path = write_audio(ctx.path(f"tone_{rate}.flac"), tone(1000.0, rate), rate, "PCM_24")
        waveform, file_rate = load_audio(path)
        return ctx.model.embed_audio(path), prepare_waveform(waveform, file_rate, RATE).numpy()

    return run


def _check_resampled_tone(result: tuple[torch.Tensor, np.ndarray], ctx: Ctx) -> None:
    embedding, mono = result
    assert mono.size == pytest.approx(1.5 * RATE, abs=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(mono.size)))
    assert np.fft.rfftfreq(mono.size, 1 / RATE)[spectrum.argmax()] == pytest.approx(1000.0, abs=1.0)
    _nearer(embedding, ctx.embed_wave(TONE), ctx.embed_wave(tone(1200.0, RATE)), 0.05)


def _check_silence(result: torch.Tensor, ctx: Ctx) -> None:
    """All-silent audio is valid: every value of its 98 frames sits on the log floor (then come padding frames)."""
    floor = (np.log(np.finfo(np.float32).eps) - ctx.model.config.audio_mean) / ctx.model.config.audio_std
    _close(result[:98], torch.full_like(result[:98], float(floor)))
    assert torch.isfinite(result).all()


def _silent_embedding_equals(result: torch.Tensor, ctx: Ctx) -> None:
    _unit(result)
    _close(result, ctx.embed_wave(np.zeros(RATE)))


def _image_pair(make: Callable[[Ctx], Path | Image.Image], reference: Callable[[], np.ndarray]) -> Callable:
    def run(ctx: Ctx) -> tuple[torch.Tensor, torch.Tensor]:
        return ctx.model.embed_image(make(ctx)), ctx.model.embed_image(reference())

    return run


def _save(ctx: Ctx, name: str, image: Image.Image, **options: Any) -> Path:
    image.save(ctx.path(name), **options)
    return ctx.path(name)


PATTERN = pattern(48, 64)
LARGE = pattern(1600, 2400)
COLORS = few_colors(48, 64)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _white_where(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    out[mask] = 255
    return out


def _near_pattern(ratio: float) -> Ok:
    """Close to the RGB pattern's embedding, compared with the distance to the pattern upside down."""

    def check(result: torch.Tensor, ctx: Ctx) -> None:
        flipped = ctx.model.embed_image(np.ascontiguousarray(PATTERN[::-1]))
        _nearer(result, ctx.model.embed_image(PATTERN), flipped, ratio)

    return Ok(check)


def _rgba(alpha: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([PATTERN, alpha]).astype(np.uint8), "RGBA")


def _bit_image() -> tuple[Image.Image, np.ndarray]:
    bits = (PATTERN[..., 0] > 127).astype(np.uint8) * 255
    return Image.fromarray(bits).convert("1"), np.dstack([bits] * 3)


def _palette_transparent(ctx: Ctx) -> Path:
    image = Image.fromarray(COLORS).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    index = image.getpixel((20, 15))  # the square of color 5
    return _save(ctx, "transparent.png", image, transparency=index)


def _check_video(result: equiav.VideoEmbedding, ctx: Ctx) -> None:
    """The frame embeds like the solid color it shows; the soundtrack is the 440 Hz tone, embedded as decoded."""
    solid = np.empty((48, 64, 3), dtype=np.uint8)
    solid[:] = (40, 160, 220)
    other = solid[..., ::-1].copy()
    _nearer(result.image, ctx.model.embed_image(solid), ctx.model.embed_image(other), 0.1)
    soundtrack = read_video_audio(ctx.path("clip.mp4"), RATE).numpy()
    spectrum = np.abs(np.fft.rfft(soundtrack * np.hanning(soundtrack.size)))
    assert np.fft.rfftfreq(soundtrack.size, 1 / RATE)[spectrum.argmax()] == pytest.approx(440.0, abs=2.0)
    _close(result.audio, ctx.embed_wave(soundtrack), atol=1e-6)


def _legit_checkpoint(ctx: Ctx) -> tuple[EquiAVModel, EquiAVModel]:
    """The authors' format (``__M__.``-prefixed pickled state dict) loads through the weights-only unpickler."""
    path = ctx.path("pretrain.pth")
    torch.save({f"__M__.{k}": v for k, v in ctx.model.state_dict().items()}, path)
    return EquiAVModel.from_pretrained(path, config="equiav-tiny"), ctx.model


def _same_weights(pair: tuple[EquiAVModel, EquiAVModel], ctx: Ctx) -> None:
    loaded, original = pair
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _damaged_weights(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> EquiAVModel:
        folder = ctx.weights()
        tensors = load_file(folder / "model.safetensors")
        change(tensors)
        save_file(tensors, str(folder / "model.safetensors"))
        return EquiAVModel.from_pretrained(folder)

    return run


def _weights_bytes(make: Callable[[Path], Any]) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> EquiAVModel:
        folder = ctx.weights()
        make(folder / "model.safetensors")
        return EquiAVModel.from_pretrained(folder)

    return run


# ------------------------------------------------------------------------------------------------------------------
# Manifests
# ------------------------------------------------------------------------------------------------------------------


def _dataset(ctx: Ctx, rows: list[Any], label_csv: Path | None = None) -> Any:
    manifest = write_manifest(ctx.path("train.json"), rows)
    data = DataConfig(
        kind="manifest", path=str(manifest), frame_count=FRAMES, num_views=2, label_csv=label_csv
    )
    return build_dataset(data, ctx.model.config, "train")


def _manifest_text(text: str) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        ctx.path("train.json").write_text(text)
        data = DataConfig(kind="manifest", path=str(ctx.path("train.json")), frame_count=FRAMES)
        return build_dataset(data, ctx.model.config, "train")

    return run


def _manifest_rows(change: Callable[[dict[str, Any]], Any]) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        row = write_clip(ctx.dir, "clip", FRAMES)
        return _dataset(ctx, [change(row)])

    return run


def _without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda row: {k: v for k, v in row.items() if k != key}


def _bad_item(damage: Callable[[Ctx, Path], Any]) -> Callable[[Ctx], Any]:
    """Item 0 of a manifest whose clip files were damaged by ``damage(ctx, clip_root)``."""

    def run(ctx: Ctx) -> Any:
        row = write_clip(ctx.dir, "clip", FRAMES)
        damage(ctx, ctx.dir)
        return _dataset(ctx, [row])[0]

    return run


def _unknown_label(ctx: Ctx) -> Any:
    row = write_clip(ctx.dir, "clip", FRAMES) | {"labels": "/m/dog,/m/unicorn"}
    return _dataset(ctx, [row], write_label_csv(ctx.path("labels.csv"), ["/m/dog", "/m/cat"]))


def _bad_label_csv(ctx: Ctx) -> Any:
    ctx.path("labels.csv").write_text("id,name\n0,dog\n")
    return _dataset(ctx, [write_clip(ctx.dir, "clip", FRAMES)], ctx.path("labels.csv"))


def _all_bad_run(ctx: Ctx) -> None:
    rows = [
        write_clip(ctx.dir, "clip", FRAMES) | {"wav": "audio/missing.wav"},
        write_clip(ctx.dir, "two", FRAMES),
    ]
    ctx.path("audio/two.wav").write_text("not audio")
    dataset = _dataset(ctx, rows)
    tracker = BadItemTracker(max_fraction=0.5, min_items=100)
    tracker.update(collate_items([dataset[0], dataset[1]]))
    tracker.close()


def _check_item(item: Any, ctx: Ctx) -> None:
    """A readable item carries the clip's filterbank (rolled in time: the same values in another order)."""
    assert not isinstance(item, BadItem), item
    expected = load_fbank(ctx.path("audio/clip.wav"), ctx.model.config)
    assert torch.equal(item["audio"].flatten().sort().values, expected.flatten().sort().values)
    assert item["image"].shape == (3, 64, 64) and torch.isfinite(item["image_aug"]).all()


# ------------------------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------------------------


def _wav(ctx: Ctx, name: str, samples: int = RATE, subtype: str = "PCM_16") -> Path:
    return write_audio(ctx.path(name), quantize(TONE[:samples], 16), RATE, subtype)


def _float_wav_with(value: float, subtype: str) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        values = TONE.copy()
        values[100] = value
        return ctx.model.embed_audio(write_audio(ctx.path(f"bad_{subtype}.wav"), values, RATE, subtype))

    return run


def _embed_file(make: Callable[[Ctx], Path]) -> Callable[[Ctx], Any]:
    return lambda ctx: ctx.model.embed_audio(make(ctx))


def _embed_image_file(make: Callable[[Ctx], Path]) -> Callable[[Ctx], Any]:
    return lambda ctx: ctx.model.embed_image(make(ctx))


def _jpeg(ctx: Ctx, name: str, rgb: np.ndarray = PATTERN) -> Path:
    return _save(ctx, name, Image.fromarray(rgb), quality=95, subsampling=0)


def _jpeg_marker(ctx: Ctx, name: str, marker: bytes, offset: int, replacement: bytes) -> Path:
    path = _jpeg(ctx, name)
    return patch(path, path.read_bytes().index(marker) + offset, replacement)


def _png(ctx: Ctx, name: str) -> Path:
    return _save(ctx, name, Image.fromarray(PATTERN))


def _mp3(ctx: Ctx, name: str) -> Path:
    if not can_write_mp3():
        pytest.skip("this libsndfile cannot write MP3")
    return write_mp3(ctx.path(name), TONE, RATE)


def _one_frame(ctx: Ctx) -> tuple[torch.Tensor, torch.Tensor]:
    path = _wav(ctx, "frame.wav", 400)
    return load_fbank(path, ctx.model.config), ctx.model.embed_audio(path)


def _check_one_frame(result: tuple[torch.Tensor, torch.Tensor], ctx: Ctx) -> None:
    """400 samples make exactly one frame; the other 127 are padding, which the normalization maps to a constant."""
    fbank, embedding = result
    _unit(embedding)
    padding = -ctx.model.config.audio_mean / ctx.model.config.audio_std
    _close(fbank[1:], torch.full_like(fbank[1:], padding))
    assert (fbank[0] - padding).abs().max() > 1.0


def _without_file(name: str) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> EquiAVModel:
        folder = ctx.weights()
        (folder / name).unlink()
        return EquiAVModel.from_pretrained(folder)

    return run


def _pickle_instead_of_safetensors(ctx: Ctx) -> EquiAVModel:
    """A repository that ships only ``pytorch_model.bin`` (a pickle) is not unpickled: model.safetensors is needed."""
    folder = ctx.weights()
    torch.save(ctx.model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return EquiAVModel.from_pretrained(folder)


def _checkpoint(ctx: Ctx, name: str, content: Any) -> EquiAVModel:
    torch.save(content, ctx.path(name))
    return EquiAVModel.from_pretrained(ctx.path(name))


AUDIO_CASES: dict[str, tuple[Callable[[Ctx], Any], Ok | Fails | Skipped]] = {
    # Broken or non-audio files.
    "wav-missing": (lambda c: c.model.embed_audio(c.path("missing.wav")), Fails(AudioDecodeError, r"missing\.wav: audio file not found")),
    "wav-is-directory": (lambda c: c.model.embed_audio(c.dir), Fails(AudioDecodeError, r"{dir}: cannot read audio: the path is a directory")),
    "wav-empty": (_embed_file(lambda c: empty_file(c.path("empty.wav"))), Fails(AudioDecodeError, r"empty\.wav: audio file is empty \(0 bytes\)")),
    "wav-text-file": (_embed_file(lambda c: text_file(c.path("notes.wav"))), Fails(AudioDecodeError, r"notes\.wav: cannot decode audio")),
    "wav-header-only": (_embed_file(lambda c: _wav(c, "header.wav", 0)), Fails(AudioDecodeError, r"header\.wav: audio file holds no samples")),
    "wav-header-cut": (_embed_file(lambda c: truncate(_wav(c, "cut.wav"), 30)), Fails(AudioDecodeError, r"cut\.wav: cannot decode audio")),
    "wav-data-truncated": (_embed_file(lambda c: truncate(_wav(c, "half.wav"), 0.6)), Fails(AudioDecodeError, r"half\.wav: truncated audio file")),
    "wav-bad-magic": (_embed_file(lambda c: patch(_wav(c, "magic.wav"), 8, b"XXXX")), Fails(AudioDecodeError, r"magic\.wav: cannot decode audio")),
    "wav-bad-fmt-chunk": (_embed_file(lambda c: patch(_wav(c, "fmt.wav"), 20, b"\x99\x99")), Fails(AudioDecodeError, r"fmt\.wav: cannot decode audio")),
    "flac-truncated": (_embed_file(lambda c: truncate(write_audio(c.path("half.flac"), TONE, RATE), 0.5)), Fails(AudioDecodeError, r"half\.flac: (cannot decode|truncated)")),
    "flac-corrupt": (_embed_file(lambda c: scramble(write_audio(c.path("bad.flac"), TONE, RATE), 0.5, 64)), Fails(AudioDecodeError, r"bad\.flac: cannot decode audio")),
    "mp3-truncated": (_embed_file(lambda c: truncate(_mp3(c, "half.mp3"), 0.5)), Fails(AudioDecodeError, r"half\.mp3: truncated audio file")),
    "mp3-corrupt-frames": (_embed_file(lambda c: scramble(_mp3(c, "bad.mp3"), 0.5, 64)), Fails(AudioDecodeError, r"bad\.mp3: truncated audio file")),
    "mp3-garbage-after-header": (_embed_file(lambda c: scramble(_mp3(c, "junk.mp3"), 100)), Fails(AudioDecodeError, r"junk\.mp3: cannot decode audio")),
    "mp3-header-only": (_embed_file(lambda c: truncate(_mp3(c, "head.mp3"), 50)), Fails(AudioDecodeError, r"head\.mp3: cannot decode audio")),
    # Too short, non-finite or silent audio.
    "wav-one-sample": (_embed_file(lambda c: _wav(c, "one.wav", 1)), Fails(InvalidInputError, r"one\.wav: waveform has 1 samples.*needs at least 400")),
    "wav-stereo-one-sample": (_embed_file(lambda c: write_audio(c.path("two.wav"), np.zeros((1, 2)), RATE)), Fails(InvalidInputError, r"two\.wav: waveform has 1 samples")),
    "wav-399-samples": (_embed_file(lambda c: _wav(c, "short.wav", 399)), Fails(InvalidInputError, r"short\.wav: waveform has 399 samples")),
    "wav-one-frame": (_one_frame, Ok(_check_one_frame)),
    "wav-float-nan": (_float_wav_with(float("nan"), "FLOAT"), Fails(InvalidInputError, r"bad_FLOAT\.wav: waveform contains NaN or infinite samples")),
    "wav-double-inf": (_float_wav_with(float("inf"), "DOUBLE"), Fails(InvalidInputError, r"bad_DOUBLE\.wav: waveform contains NaN or infinite samples")),
    "wav-silent": (lambda c: load_fbank(write_audio(c.path("silent.wav"), np.zeros(RATE, np.int16), RATE), c.model.config), Ok(_check_silence)),
    "wav-silent-embedding": (_embed_file(lambda c: write_audio(c.path("silent.wav"), np.zeros(RATE, np.int16), RATE)), Ok(_silent_embedding_equals)),
    "wav-constant-dc": (_embed_file(lambda c: write_audio(c.path("dc.wav"), np.full(RATE, 0.25), RATE)), Ok(_silent_embedding_equals)),
    # Sample formats: each file embeds exactly like the float64 array of the values it stores.
    "wav-pcm-u8": (_pcm_file("PCM_U8", 8), _same_pair()),
    "wav-pcm-16": (_pcm_file("PCM_16", 16), _same_pair()),
    "wav-pcm-24": (_pcm_file("PCM_24", 24), _same_pair()),
    "wav-pcm-32": (_pcm_file("PCM_32", 32), _same_pair()),
    "wav-float32": (_pcm_file("FLOAT", 24), _same_pair()),
    "wav-float64": (_pcm_file("DOUBLE", 32), _same_pair()),
    "flac-pcm-24": (_pcm_file("PCM_24", 24, "flac"), _same_pair()),
    "wav-pcm24-equals-float64": (lambda c: (c.model.embed_audio(write_audio(c.path("a.wav"), quantize(TONE, 24), RATE, "PCM_24")), c.model.embed_audio(write_audio(c.path("b.wav"), quantize(TONE, 24), RATE, "DOUBLE"))), _same_pair()),
    "mp3-valid": (_embed_file(lambda c: _mp3(c, "tone.mp3")), Ok(lambda r, c: _nearer(r, c.embed_wave(TONE), c.embed_wave(tone(1200.0, RATE)), 0.1))),
    # Channel counts: copies of one signal embed like the mono signal, in files and in (N, C) arrays.
    **{f"wav-{n}-channels": (_channels_file(n), _same_pair()) for n in (1, 2, 6, 8, 12)},
    "array-8-channels-last": (lambda c: (c.embed_wave(np.repeat(TONE[:, None], 8, 1)), c.embed_wave(TONE)), _same_pair()),
    # Sample rates: the resampled tone peaks at its frequency and embeds like the 16 kHz original.
    **{f"flac-{rate}-hz": (_rate_file(rate), Ok(_check_resampled_tone)) for rate in (8000, 11025, 22050, 44100, 48000, 96000, 192000)},
    # Raw arrays and tensors.
    "array-empty": (lambda c: c.embed_wave(np.zeros(0, np.float32)), Fails(InvalidInputError, r"waveform: waveform has no samples")),
    "array-one-sample": (lambda c: c.embed_wave(np.zeros(1, np.float32)), Fails(InvalidInputError, r"waveform has 1 samples")),
    "array-nan": (lambda c: c.embed_wave(np.full(RATE, np.nan, np.float32)), Fails(InvalidInputError, r"waveform: waveform contains NaN")),
    "tensor-inf": (lambda c: c.embed_wave(torch.full((RATE,), float("-inf"))), Fails(InvalidInputError, r"waveform: waveform contains NaN or infinite")),
    "array-silent": (lambda c: c.embed_wave(np.zeros(RATE, np.float32)), Ok(lambda r, c: _unit(r))),
    "array-9-channels": (lambda c: c.embed_wave(np.zeros((9, RATE), np.float32)), Fails(InvalidInputError, r"at most 8 channels.*\(9, 16000\)")),
    "array-ambiguous-layout": (lambda c: c.embed_wave(np.zeros((2, 2), np.float32)), Fails(InvalidInputError, r"shape \(2, 2\)")),
    "array-3d": (lambda c: c.embed_wave(np.zeros((1, 2, RATE), np.float32)), Fails(InvalidInputError, r"shape \(1, 2, 16000\)")),
    "array-complex": (lambda c: c.embed_wave(np.zeros(RATE, np.complex64)), Fails(InvalidInputError, r"numeric audio array, got dtype complex64")),
    "array-bool": (lambda c: c.embed_wave(np.zeros(RATE, bool)), Fails(InvalidInputError, r"got dtype bool")),
    "array-strings": (lambda c: c.embed_wave(np.array(["a", "b"])), Fails(InvalidInputError, r"got dtype <U1")),
    "array-int64": (lambda c: c.embed_wave(np.zeros(RATE, np.int64)), Fails(InvalidInputError, r"unsupported sample dtype torch\.int64")),
    "array-no-sample-rate": (lambda c: c.model.embed_audio(TONE), Fails(InvalidInputError, r"sample_rate is required")),
    "array-sample-rate-zero": (lambda c: c.embed_wave(TONE, 0), Fails(InvalidInputError, r"sample_rate must be a positive integer.*got 0")),
    "array-sample-rate-float": (lambda c: c.embed_wave(TONE, 16000.5), Fails(InvalidInputError, r"sample_rate must be a positive integer.*16000\.5")),
    "audio-input-number": (lambda c: c.model.embed_audio(12), Fails(InvalidInputError, r"audio input must be a file path.*got int")),
    "audio-input-empty-list": (lambda c: c.model.embed_audio([]), Fails(InvalidInputError, r"empty list of inputs")),
    "audio-windows-unknown": (lambda c: c.model.embed_audio(TONE, RATE, windows="all"), Fails(InvalidInputError, r"windows must be 'crop' or 'sliding', got 'all'")),
}  # fmt: skip

IMAGE_CASES: dict[str, tuple[Callable[[Ctx], Any], Ok | Fails | Skipped]] = {
    "image-missing": (lambda c: c.model.embed_image(c.path("missing.png")), Fails(ImageDecodeError, r"missing\.png: the path does not exist")),
    "image-is-directory": (lambda c: c.model.embed_image(c.dir), Fails(ImageDecodeError, r"{dir}: the path is a directory")),
    "jpg-empty": (_embed_image_file(lambda c: empty_file(c.path("empty.jpg"))), Fails(ImageDecodeError, r"empty\.jpg: cannot identify image file")),
    "jpg-text-file": (_embed_image_file(lambda c: text_file(c.path("notes.jpg"))), Fails(ImageDecodeError, r"notes\.jpg: cannot identify image file")),
    "jpg-truncated": (_embed_image_file(lambda c: truncate(_jpeg(c, "half.jpg"), 0.5)), Fails(ImageDecodeError, r"half\.jpg: image file is truncated")),
    "jpg-corrupt-frame-header": (_embed_image_file(lambda c: _jpeg_marker(c, "sof.jpg", b"\xff\xc0", 5, bytes(4))), Fails(ImageDecodeError, r"sof\.jpg: cannot identify image file")),
    "jpg-corrupt-huffman-table": (_embed_image_file(lambda c: _jpeg_marker(c, "dht.jpg", b"\xff\xc4", 4, b"\xff" * 26)), Fails(ImageDecodeError, r"dht\.jpg: broken data stream")),
    "png-truncated": (_embed_image_file(lambda c: truncate(_png(c, "half.png"), 0.5)), Fails(ImageDecodeError, r"half\.png: image file is truncated")),
    "png-corrupt-pixels": (_embed_image_file(lambda c: scramble(_png(c, "bad.png"), 0.5, 16)), Fails(ImageDecodeError, r"bad\.png: (broken data stream|cannot decode)")),
    "png-corrupt-header": (_embed_image_file(lambda c: patch(_png(c, "ihdr.png"), 20, b"\x00\x00\x99")), Fails(ImageDecodeError, r"ihdr\.png: cannot identify image file")),
    "png-bomb-header": (_embed_image_file(lambda c: png_claiming_size(c.path("bomb.png"), 20000, 20000)), Fails(ImageDecodeError, r"refusing to decode image .*bomb\.png: Image size \(400000000 pixels\)")),
    "png-bomb-under-twice-the-limit": (_embed_image_file(lambda c: png_claiming_size(c.path("big.png"), 15000, 15000)), Fails(ImageDecodeError, r"refusing to decode image .*big\.png: Image size \(225000000 pixels\)")),
    "png-thin-strip": (_embed_image_file(lambda c: _save(c, "strip.png", Image.new("RGB", (50000, 1)))), Fails(InvalidInputError, r"strip\.png: image of 50000x1 pixels would be resized to 3200000x64")),
    "png-1x1": (_image_pair(lambda c: _save(c, "dot.png", Image.new("RGB", (1, 1), (200, 30, 90))), lambda: np.full((64, 64, 3), (200, 30, 90), np.uint8)), _same_pair()),
    "jpg-large-2400x1600": (_image_pair(lambda c: _jpeg(c, "large.jpg", LARGE), lambda: LARGE), _same_pair(2e-2)),
    "png-gray": (_image_pair(lambda c: _save(c, "gray.png", Image.fromarray(_gray(PATTERN))), lambda: np.dstack([_gray(PATTERN)] * 3)), _same_pair()),
    "png-gray-16-bit": (_image_pair(lambda c: _save(c, "gray16.png", Image.fromarray(_gray(PATTERN).astype(np.uint16) * 257)), lambda: np.dstack([_gray(PATTERN)] * 3)), _same_pair()),
    "tif-float-gray": (_image_pair(lambda c: _save(c, "float.tif", Image.fromarray(_gray(PATTERN).astype(np.float32) / 255)), lambda: np.dstack([_gray(PATTERN)] * 3)), _same_pair()),
    "png-bilevel": (_image_pair(lambda c: _save(c, "bits.png", _bit_image()[0]), lambda: _bit_image()[1]), _same_pair()),
    "png-palette": (_image_pair(lambda c: _save(c, "palette.png", Image.fromarray(COLORS).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)), lambda: COLORS), _same_pair()),
    "gif-palette": (_image_pair(lambda c: _save(c, "palette.gif", Image.fromarray(COLORS).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)), lambda: COLORS), _same_pair()),
    "png-palette-transparent": (_image_pair(_palette_transparent, lambda: _white_where(COLORS, (COLORS == COLORS[15, 20]).all(-1))), _same_pair()),
    "png-rgba-opaque": (_image_pair(lambda c: _save(c, "opaque.png", _rgba(np.full((48, 64), 255))), lambda: PATTERN), _same_pair()),
    "png-rgba-transparent-half": (_image_pair(lambda c: _save(c, "alpha.png", _rgba(np.where(np.arange(64) < 32, 0, 255)[None].repeat(48, 0))), lambda: _white_where(PATTERN, np.arange(64)[None].repeat(48, 0) < 32)), _same_pair()),
    "png-gray-alpha-opaque": (_image_pair(lambda c: _save(c, "la.png", Image.fromarray(_gray(PATTERN)).convert("LA")), lambda: np.dstack([_gray(PATTERN)] * 3)), _same_pair()),
    "tif-cmyk": (_image_pair(lambda c: _save(c, "cmyk.tif", Image.fromarray(PATTERN).convert("CMYK")), lambda: PATTERN), _same_pair()),
    "jpg-cmyk": (_embed_image_file(lambda c: _save(c, "cmyk.jpg", Image.fromarray(PATTERN).convert("CMYK"), quality=95)), _near_pattern(0.1)),
    "jpg-rgb": (_embed_image_file(lambda c: _jpeg(c, "rgb.jpg")), _near_pattern(0.1)),
    # Arrays and tensors.
    "image-array-empty": (lambda c: c.model.embed_image(np.zeros((0, 5, 3), np.uint8)), Fails(InvalidInputError, r"images\[0\]: image array has shape \(0, 5, 3\)")),
    "image-array-5-channels": (lambda c: c.model.embed_image(np.zeros((5, 5, 5), np.uint8)), Fails(InvalidInputError, r"shape \(5, 5, 5\).*C in \(1, 3, 4\)")),
    "image-array-1d": (lambda c: c.model.embed_image(np.zeros(5, np.uint8)), Fails(InvalidInputError, r"shape \(5,\)")),
    "image-array-int16": (lambda c: c.model.embed_image(np.zeros((5, 5, 3), np.int16)), Fails(InvalidInputError, r"dtype int16.*expected uint8")),
    "image-array-float-0-255": (lambda c: c.model.embed_image(np.full((5, 5, 3), 200.0, np.float32)), Fails(InvalidInputError, r"float image values must lie in \[0, 1\]")),
    "image-tensor-nan": (lambda c: c.model.embed_image(torch.full((3, 5, 5), float("nan"))), Fails(InvalidInputError, r"contains NaN or infinite")),
    "image-tensor-5d": (lambda c: c.model.embed_image(torch.zeros(1, 2, 3, 5, 5)), Fails(InvalidInputError, r"shape \(1, 2, 3, 5, 5\)")),
    "image-tensor-bool": (lambda c: c.model.embed_image(torch.zeros(3, 5, 5, dtype=torch.bool)), Fails(InvalidInputError, r"dtype torch\.bool")),
    "image-none": (lambda c: c.model.embed_image(None), Fails(InvalidInputError, r"images\[0\]: image must be .*got NoneType")),
    "image-empty-list": (lambda c: c.model.embed_image([]), Fails(InvalidInputError, r"empty list of inputs")),
}  # fmt: skip

VIDEO_CASES: dict[str, tuple[Callable[[Ctx], Any], Ok | Fails | Skipped]] = {
    "video-valid": (lambda c: c.model.embed_video(write_video(c.path("clip.mp4"))), Ok(_check_video)),
    "video-missing": (lambda c: c.model.embed_video(c.path("missing.mp4")), Fails(VideoDecodeError, r"missing\.mp4: the path does not exist")),
    "video-empty": (lambda c: c.model.embed_video(empty_file(c.path("empty.mp4"))), Fails(VideoDecodeError, r"cannot open video .*empty\.mp4")),
    "video-text-file": (lambda c: c.model.embed_video(text_file(c.path("notes.mp4"))), Fails(VideoDecodeError, r"cannot open video .*notes\.mp4")),
    "video-truncated": (lambda c: c.model.embed_video(truncate(write_video(c.path("half.mp4")), 0.5)), Fails(VideoDecodeError, r"half\.mp4")),
    "video-without-audio": (lambda c: c.model.embed_video(write_video(c.path("mute.mp4"), audio=False)), Fails(VideoDecodeError, r"mute\.mp4 has no audio stream")),
    "video-audio-only": (lambda c: c.model.embed_video(write_video(c.path("sound.mp4"), color=None)), Fails(VideoDecodeError, r"sound\.mp4 has no video stream")),
    "video-of-a-wav": (lambda c: c.model.embed_video(_wav(c, "tone.wav")), Fails(VideoDecodeError, r"tone\.wav has no video stream")),
}  # fmt: skip

MODEL_CASES: dict[str, tuple[Callable[[Ctx], Any], Ok | Fails | Skipped]] = {
    # Tensors handed to the towers directly.
    "encode-audio-wrong-shape": (lambda c: c.model.encode_audio(torch.zeros(1, 100, 128)), Fails(InvalidInputError, r"audio must have shape \(B, 128, 128\).*got \(1, 100, 128\)")),
    "encode-audio-integer": (lambda c: c.model.encode_audio(torch.zeros(1, 128, 128, dtype=torch.int64)), Fails(InvalidInputError, r"floating-point filterbank, got dtype torch\.int64")),
    "encode-audio-not-a-tensor": (lambda c: c.model.encode_audio(np.zeros((1, 128, 128), np.float32)), Fails(InvalidInputError, r"audio must be a tensor.*got ndarray")),
    "encode-image-wrong-shape": (lambda c: c.model.encode_image(torch.zeros(1, 3, 32, 32)), Fails(InvalidInputError, r"image must have shape \(B, 3, 64, 64\), got \(1, 3, 32, 32\)")),
    "encode-image-integer": (lambda c: c.model.encode_image(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), Fails(InvalidInputError, r"got dtype torch\.uint8")),
    "encode-views-wrong-size": (lambda c: c.model.encode_audio(torch.zeros(1, 128, 128), views=torch.zeros(4, 5)), Fails(InvalidInputError, r"views must be \(S, 24\)")),
    # Model names.
    "model-unknown-preset": (lambda c: EquiAVModel("equiav-nope"), Fails(UnknownModelError, r"unknown model name 'equiav-nope'; available presets: equiav-base")),
    "model-config-of-wrong-type": (lambda c: EquiAVModel(42), Fails(InvalidInputError, r"config must be an EquiAVConfig, a dict or a preset name, got int")),
    "pretrained-unknown-name": (lambda c: EquiAVModel.from_pretrained("equiav-nope"), Fails(UnknownModelError, r"'equiav-nope' is not a registered model")),
    "pretrained-preset-without-weights": (lambda c: EquiAVModel.from_pretrained("equiav-tiny"), Fails(UnknownModelError, r"'equiav-tiny' is an architecture preset without packaged weights")),
    "pretrained-missing-file": (lambda c: EquiAVModel.from_pretrained(c.path("nope.pth")), Fails(UnknownModelError, r"nope\.pth' is not a registered model, an existing file")),
    "pretrained-repo-not-cached": (lambda c: EquiAVModel.from_pretrained("owner/absent", local_files_only=True, cache_dir=c.dir), Fails(UnknownModelError, r"hub repository 'owner/absent'")),
    "pretrained-unknown-keyword": (lambda c: EquiAVModel.from_pretrained(c.weights(), trust_remote_code=True), Fails(ConfigError, r"unknown config field\(s\) \['trust_remote_code'\]")),
    # config.json next to the weights.
    "config-missing": (_without_file("config.json"), Fails(ConfigError, r"weights: no config\.json")),
    "config-invalid-json": (config_text(b"{embed_dim: 128"), Fails(ConfigError, r"config\.json: not valid JSON")),
    "config-not-an-object": (config_text(b"[1, 2, 3]"), Fails(ConfigError, r"config\.json: expected a JSON object, got list")),
    "config-not-utf8": (config_text(b"\xff\xfe\x00\x01garbage"), Fails(ConfigError, r"config\.json: cannot read config file")),
    "config-auto-map": (damaged_config(auto_map={"AutoModel": "modeling_evil.Evil"}), Fails(ConfigError, r"config\.json: unknown config field\(s\) \['auto_map'\]")),
    "config-string-for-int": (damaged_config(depth="4"), Fails(ConfigError, r"config\.json: config field 'depth' must be a positive integer, got '4'")),
    "config-string-for-float": (damaged_config(audio_std="4.3"), Fails(ConfigError, r"config\.json: config field 'audio_std' must be a finite positive number, got '4\.3'")),
    "config-nan": (damaged_config(audio_mean=float("nan")), Fails(ConfigError, r"config\.json: config field 'audio_mean' must be a finite number, got nan")),
    "config-negative-ratio": (damaged_config(mlp_ratio=-4), Fails(ConfigError, r"config\.json: config field 'mlp_ratio'")),
    "config-bad-image-mean": (damaged_config(image_mean="abc"), Fails(ConfigError, r"config\.json: config field 'image_mean' must be a list of 3 numbers")),
    "config-does-not-match-weights": (damaged_config(depth=2), Fails(CheckpointError, r"model\.safetensors: weights do not match the model; .*unexpected tensor\(s\): blocks_a\.2\.")),
    # model.safetensors.
    "weights-file-missing": (_without_file("model.safetensors"), Fails(CheckpointError, r"weights: no model\.safetensors")),
    "weights-pickle-beside-config": (_pickle_instead_of_safetensors, Fails(CheckpointError, r"weights: no model\.safetensors")),
    "weights-garbage": (_weights_bytes(lambda p: scramble(p, 0)), Fails(CheckpointError, r"model\.safetensors: not a readable safetensors file")),
    "weights-truncated": (_weights_bytes(lambda p: truncate(p, 0.5)), Fails(CheckpointError, r"model\.safetensors: not a readable safetensors file")),
    "weights-pickle-named-safetensors": (_weights_bytes(lambda p: torch.save({"norm_a.weight": torch.ones(128)}, p)), Fails(CheckpointError, r"model\.safetensors: not a readable safetensors file")),
    "weights-missing-tensor": (_damaged_weights(lambda t: t.pop("norm_v.bias")), Fails(CheckpointError, r"model\.safetensors: .*1 missing tensor\(s\): norm_v\.bias")),
    "weights-extra-tensor": (_damaged_weights(lambda t: t.update({"extra.weight": torch.zeros(2)})), Fails(CheckpointError, r"model\.safetensors: .*1 unexpected tensor\(s\): extra\.weight")),
    "weights-mis-shaped-tensor": (_damaged_weights(lambda t: t.update({"norm_a.weight": torch.zeros(3)})), Fails(CheckpointError, r"model\.safetensors: .*mis-shaped tensor\(s\): norm_a\.weight: checkpoint \(3,\) vs model \(128,\)")),
    "weights-views-wrong-size": (_damaged_weights(lambda t: t.update({"audio_views": torch.zeros(16, 5)})), Fails(CheckpointError, r"model\.safetensors: 'audio_views' has vectors of size 5, the model expects 24")),
    "weights-half-precision": (_damaged_weights(lambda t: t.update({k: v.half() for k, v in t.items()})), Ok(lambda m, c: _nearer(m.embed_audio(TONE, RATE), c.embed_wave(TONE), c.embed_wave(tone(1200.0, RATE)), 0.05))),
    # Checkpoint files in the authors' pickle format.
    "checkpoint-weights-only-pickle": (_legit_checkpoint, Ok(_same_weights)),
    "checkpoint-runs-code": (lambda c: EquiAVModel.from_pretrained(malicious_checkpoint(c.path("evil.pth"), c.path("pwned"))), Fails(CheckpointError, r"evil\.pth: cannot be read as a weights-only checkpoint")),
    "checkpoint-empty-dict": (lambda c: _checkpoint(c, "empty.pth", {}), Fails(CheckpointError, r"empty\.pth: expected a state dict of tensors")),
    "checkpoint-text-file": (lambda c: EquiAVModel.from_pretrained(text_file(c.path("notes.pth"))), Fails(CheckpointError, r"notes\.pth: cannot be read as a weights-only checkpoint")),
    "checkpoint-safetensors-garbage": (lambda c: read_checkpoint(scramble(text_file(c.path("x.safetensors")), 0)), Fails(CheckpointError, r"x\.safetensors: not a readable safetensors file")),
}  # fmt: skip

MANIFEST_CASES: dict[str, tuple[Callable[[Ctx], Any], Ok | Fails | Skipped]] = {
    "manifest-valid-item": (lambda c: _dataset(c, [write_clip(c.dir, "clip", FRAMES)])[0], Ok(_check_item)),
    "manifest-missing": (lambda c: build_dataset(DataConfig(kind="manifest", path=str(c.path("none.json"))), c.model.config, "train"), Fails(DatasetError, r"none\.json: cannot read manifest JSON")),
    "manifest-invalid-json": (_manifest_text('{"data": [}'), Fails(DatasetError, r"train\.json: cannot read manifest JSON")),
    "manifest-without-data": (_manifest_text('{"rows": []}'), Fails(DatasetError, r"train\.json: manifest must be an object whose 'data' is a non-empty list")),
    "manifest-entry-not-object": (_manifest_text('{"data": ["clip.wav"]}'), Fails(DatasetError, r"train\.json, entry 0: expected an object, got str")),
    "manifest-missing-wav": (_manifest_rows(_without("wav")), Fails(DatasetError, r"train\.json, entry 0: missing or non-string field\(s\) \['wav'\]")),
    "manifest-missing-video-id": (_manifest_rows(_without("video_id")), Fails(DatasetError, r"entry 0: missing or non-string field\(s\) \['video_id'\]")),
    "manifest-labels-not-string": (_manifest_rows(lambda r: r | {"labels": ["/m/dog"]}), Fails(DatasetError, r"entry 0: 'labels' must be a comma-separated string")),
    "manifest-unknown-label": (_unknown_label, Fails(DatasetError, r"label '/m/unicorn' is not in the label CSV .*labels\.csv")),
    "label-csv-without-columns": (_bad_label_csv, Fails(DatasetError, r"labels\.csv: label CSV needs a header with the columns 'index' and 'mid'")),
    "item-wav-missing": (_bad_item(lambda c, root: (root / "audio/clip.wav").unlink()), Skipped(r"clip\.wav.*audio file not found")),
    "item-wav-text": (_bad_item(lambda c, root: (root / "audio/clip.wav").write_text("not audio")), Skipped(r"clip\.wav.*cannot decode audio")),
    "item-wav-one-sample": (_bad_item(lambda c, root: write_audio(root / "audio/clip.wav", np.zeros(1), RATE)), Skipped(r"clip\.wav.*waveform has 1 samples")),
    "item-wav-nan": (_bad_item(lambda c, root: write_audio(root / "audio/clip.wav", np.full(800, np.nan), RATE, "FLOAT")), Skipped(r"clip\.wav.*NaN")),
    "item-frame-missing": (_bad_item(lambda c, root: [(root / f"frame_{k}/clip.jpg").unlink() for k in range(FRAMES)]), Skipped(r"frame_\d/clip\.jpg: the path does not exist")),
    "item-frame-truncated": (_bad_item(lambda c, root: [truncate(root / f"frame_{k}/clip.jpg", 0.3) for k in range(FRAMES)]), Skipped(r"frame_\d/clip\.jpg: .*[Tt]runcated")),
    "run-with-too-many-bad-items": (_all_bad_run, Fails(DatasetError, r"2 of 2 items .*could not be read.*missing\.wav .*two\.wav")),
}  # fmt: skip

CASES = {**AUDIO_CASES, **IMAGE_CASES, **VIDEO_CASES, **MODEL_CASES, **MANIFEST_CASES}


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_case(case_id: str, tiny_model: EquiAVModel, saved_tiny: Path, tmp_path: Path) -> None:
    run_case(CASES[case_id], Ctx(tmp_path, tiny_model, saved_tiny))


def test_every_error_type_is_both_an_equiav_error_and_a_builtin_one() -> None:
    for error in (AudioDecodeError, ImageDecodeError, VideoDecodeError):
        assert issubclass(error, EquiAVError) and issubclass(error, OSError)
    for error in (InvalidInputError, UnknownModelError, ConfigError, CheckpointError, DatasetError):
        assert issubclass(error, EquiAVError) and issubclass(error, ValueError)


# ------------------------------------------------------------------------------------------------------------------
# Long audio: crop mode computes only the frames it keeps
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, rate", [(30.0, 16000), (12.3, 44100), (0.5, 16000)])
def test_crop_equals_the_full_filterbank_cut_after_whole_clip_mean_removal(seconds: float, rate: int) -> None:
    config = equiav.EquiAVConfig.from_preset("equiav-tiny")
    generator = torch.Generator().manual_seed(int(seconds * 10))
    waveform = 0.1 * torch.randn(2, int(seconds * rate), generator=generator) + 0.05  # a DC offset to remove
    mono = prepare_waveform(waveform, rate, config.sample_rate)
    full = kaldi_fbank(mono - mono.mean(), config.sample_rate, num_mel_bins=config.num_mel_bins)
    cut = F.pad(full, (0, 0, 0, max(0, config.target_length - full.shape[0])))[: config.target_length]
    expected = (cut - config.audio_mean) / config.audio_std
    assert torch.equal(waveform_to_fbank(waveform, rate, config), expected)


_HOUR_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch
    import equiav
    torch.set_num_threads(1)
    model = equiav.EquiAVModel("equiav-tiny").eval()
    model.embed_audio(np.zeros(32000, np.float32), sample_rate=16000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    embedding = model.embed_audio(sys.argv[1])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_bytes": (after - before) * 1024, "finite": bool(torch.isfinite(embedding).all())}))
    """
)


def test_hour_long_file_needs_memory_for_its_waveform_only(tmp_path: Path) -> None:
    path = write_hour_wav(tmp_path / "hour.wav")
    waveform_bytes = 3600 * RATE * 4  # float32 mono, what load_audio must hold (230 MB)
    result = subprocess.run(
        [sys.executable, "-c", _HOUR_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["finite"]
    # The full-hour filterbank alone would be 184 MB more, and each extra waveform copy 230 MB.
    assert report["extra_bytes"] < 1.25 * waveform_bytes, report


# ------------------------------------------------------------------------------------------------------------------
# Untrusted weights
# ------------------------------------------------------------------------------------------------------------------


def test_crafted_pickle_is_refused_everywhere_and_would_have_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = malicious_checkpoint(tmp_path / "evil.pth", marker)
    for load in (
        EquiAVModel.from_pretrained,
        read_checkpoint,
        lambda p: equiav.convert.load_mae_weights(EquiAVModel("equiav-tiny"), p),
        lambda p: equiav.convert.convert_checkpoint(p, tmp_path / "out", config=None),
    ):
        with pytest.raises(CheckpointError, match=r"evil\.pth: cannot be read as a weights-only checkpoint"):
            load(path)
        assert not marker.exists()
    # Control: the file really is an exploit for a loader that unpickles arbitrary objects.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code from a weights file ran"


def _two_commit_cache(tmp_path: Path) -> tuple[Path, dict[str, EquiAVModel]]:
    """A hub cache of owner/name with commit 'a' * 40 on main and 'b' * 40 tagged v1.0, holding different weights."""
    models = {}
    snapshots = {}
    for commit, seed in (("a" * 40, 1), ("b" * 40, 2)):
        torch.manual_seed(seed)
        models[commit] = EquiAVModel("equiav-tiny")
        snapshots[commit] = tmp_path / f"source-{seed}"
        models[commit].save_pretrained(snapshots[commit])
    cache = tmp_path / "hub"
    hub_cache_repo(cache, "owner/name", snapshots, {"main": "a" * 40, "v1.0": "b" * 40})
    return cache, models


def test_hub_revision_pins_the_commit(tmp_path: Path) -> None:
    cache, models = _two_commit_cache(tmp_path)
    options = dict(local_files_only=True, cache_dir=cache)
    for revision, commit in ((None, "a" * 40), ("main", "a" * 40), ("v1.0", "b" * 40), ("b" * 40, "b" * 40)):
        loaded = EquiAVModel.from_pretrained("owner/name", revision=revision, **options)
        assert torch.equal(loaded.modality_a, models[commit].modality_a), revision
    with pytest.raises(UnknownModelError, match=r"'owner/name' at revision 'c{40}'"):
        EquiAVModel.from_pretrained("owner/name", revision="c" * 40, **options)


def test_hub_download_asks_for_the_revision_and_only_two_data_files(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    source = tmp_path / "repo"
    EquiAVModel("equiav-tiny").save_pretrained(source)
    requests = []

    def fake_download(repo_id: str, filename: str, **kwargs: Any) -> str:
        requests.append((repo_id, filename, kwargs["revision"]))
        return str(source / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    EquiAVModel.from_pretrained("owner/name", revision="abc123")
    assert requests == [
        ("owner/name", "config.json", "abc123"),
        ("owner/name", "model.safetensors", "abc123"),
    ]


def test_code_in_a_hub_repository_is_never_imported(tmp_path: Path) -> None:
    cache, _ = _two_commit_cache(tmp_path)
    snapshot = cache / "models--owner--name" / "snapshots" / ("a" * 40)
    marker = tmp_path / "imported"
    (snapshot / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nclass Evil: pass\n"
    )
    edit_json(snapshot / "config.json", auto_map={"AutoModel": "modeling_evil.Evil"}, architectures=["Evil"])
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['architectures', 'auto_map'\]"):
        EquiAVModel.from_pretrained("owner/name", local_files_only=True, cache_dir=cache)
    clean = dict(revision="b" * 40, local_files_only=True, cache_dir=cache)
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['trust_remote_code'\]"):
        EquiAVModel.from_pretrained("owner/name", trust_remote_code=True, **clean)
    assert not marker.exists() and "modeling_evil" not in sys.modules
