"""Hostile inputs: files and values built to exhaust memory, crash the loader or slip NaN into an embedding.

``CASES`` maps an id to (run, expected) as in ``test_bad_inputs.py``: ``Ok(check)`` checks the result, ``Fails(error,
pattern)`` wants a typed ``EquiAVError`` whose message matches ``pattern`` (naming the file, field or argument), and
``Skipped(pattern)`` wants a ``BadItem``. Sizes read from files (config fields, tensor shapes, frame sizes, brace
ranges) must be refused before anything of that size is allocated; ``test_hostile_sizes_are_refused_in_bounded_memory``
measures the peak of each such case in a fresh interpreter.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cases import Ctx, Fails, Ok, Skipped, config_text, damaged_config, expect, run_case
from corpus import edit_json, tone, write_audio, write_video
from PIL import Image
from safetensors.torch import load_file, save_file

from equiav import (
    CheckpointError,
    ConfigError,
    DatasetError,
    EquiAVModel,
    InvalidInputError,
    VideoDecodeError,
)
from equiav.hub import PRETRAINED, _packaged_dir
from equiav.training.datasets import DataConfig
from equiav.training.datasets.shards import ShardDataset, ShardIndex, audio_settings, fbank_to_npy
from equiav.video import read_video_frames

pytestmark = pytest.mark.usefixtures("one_thread_module")
RATE = 16000
HUGE_SIDE = 16000


# ------------------------------------------------------------------------------------------------------------------
# Hostile files
# ------------------------------------------------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _weights(change: Callable[[dict[str, torch.Tensor]], None], **options: Any) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> EquiAVModel:
        folder = ctx.weights()
        tensors = load_file(folder / "model.safetensors")
        change(tensors)
        save_file(tensors, str(folder / "model.safetensors"))
        return EquiAVModel.from_pretrained(folder, **options)

    return run


def _set_nan(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[3] = float("nan")

    return change


def _pth(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Ctx], Any]:
    """The tiny model's weights in the authors' ``.pth`` layout, changed, loaded with the tiny preset."""

    def run(ctx: Ctx) -> EquiAVModel:
        state = {f"__M__.{k}": v.clone() for k, v in ctx.model.state_dict().items()}
        change(state)
        torch.save(state, ctx.path("pretrain.pth"))
        return EquiAVModel.from_pretrained(ctx.path("pretrain.pth"), config="equiav-tiny")

    return run


def _stray_block(state: dict[str, torch.Tensor]) -> None:
    state["__M__.blocks_a.99999999.mlp.fc1.bias"] = torch.zeros(512)


def _expanded_pos_embed(state: dict[str, torch.Tensor]) -> None:
    state["__M__.pos_embed_v"] = torch.zeros(1, 1, 128).expand(1, 10**10, 128)


def _without_blocks(state: dict[str, torch.Tensor]) -> None:
    for key in [k for k in state if k.startswith("__M__.blocks_a.")]:
        del state[key]


def _pth_nan(state: dict[str, torch.Tensor]) -> None:
    state["__M__.blocks_a.0.attn.qkv.weight"][0, 0] = float("inf")


def _loaded_with_nan(model: EquiAVModel, ctx: Ctx) -> None:
    assert torch.isnan(model.norm_v.weight).any()


def _truncated_moov(ctx: Ctx) -> Path:
    """An MP4 whose ``moov`` box (moved before the media by faststart) is cut in the middle."""
    import av

    source = write_video(ctx.path("clip.mp4"))
    fast = ctx.path("fast.mp4")
    with av.open(str(source)) as old, av.open(str(fast), "w", options={"movflags": "faststart"}) as new:
        streams = {stream.index: new.add_stream_from_template(stream) for stream in old.streams}
        for packet in old.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                new.mux(packet)
    data = fast.read_bytes()
    start = data.index(b"moov") - 4
    length = int.from_bytes(data[start : start + 4], "big")
    cut = ctx.path("cut.mp4")
    cut.write_bytes(data[: start + length // 2])
    return cut


def _mkv(path: Path, video_frames: int, audio: np.ndarray) -> Path:
    """A Matroska file with ``video_frames`` black 64x48 MPEG-4 frames and float32 PCM ``audio`` at 16 kHz."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("pcm_f32le", rate=RATE, layout="mono")
        for start in range(0, audio.size, 1024):
            chunk = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="flt", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = RATE, start, Fraction(1, RATE)
            for packet in sound.encode(chunk):
                container.mux(packet)
        picture = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        for frame in [*[picture] * video_frames, None]:
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in sound.encode(None):
            container.mux(packet)
    return path


def huge_frame_mov(path: Path, side: int = HUGE_SIDE, header: int | None = None) -> Path:
    """A QuickTime file of one ``side`` x ``side`` PNG frame (32 KB on disk); ``header`` is the size its stream
    header claims (default: the true size)."""
    import av

    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=1)
        stream.width = stream.height = header or side
        stream.pix_fmt = "monob"
        packet = av.Packet(buffer.getvalue())
        packet.stream, packet.pts, packet.dts, packet.time_base = stream, 0, 0, Fraction(1, 1)
        packet.is_keyframe = True
        container.mux(packet)
    return path


def _shard_item(fbank: np.ndarray) -> Callable[[Ctx], Any]:
    """One shard sample whose stored filterbank is ``fbank``, read as the training data set reads it."""

    def run(ctx: Ctx) -> Any:
        config = ctx.model.config
        meta = {
            "format": "equiav-shards",
            "shards": [{"file": "s0.tar", "count": 1}],
            "audio": audio_settings(config),
        }
        ctx.path("shards.json").write_text(json.dumps(meta))
        data = DataConfig(kind="shards", path=str(ctx.dir), frame_count=1, num_views=2)
        frame = io.BytesIO()
        Image.new("RGB", (64, 64), (40, 160, 220)).save(frame, format="JPEG")
        members = {
            "fbank.npy": fbank_to_npy(torch.from_numpy(fbank)),
            "frame_0.jpg": frame.getvalue(),
            "json": b"{}",
        }
        return ShardDataset(data, config, "train")._read_item(0, "s0.tar#0", members, 0)

    return run


def _fbank(value: float) -> np.ndarray:
    fbank = np.zeros((128, 128), np.float32)
    fbank[5, 7] = value
    return fbank


def _same_as_each(batch: torch.Tensor) -> Callable[[torch.Tensor, Ctx], None]:
    def check(result: torch.Tensor, ctx: Ctx) -> None:
        expected = torch.cat([ctx.model.embed_image(image) for image in batch])
        torch.testing.assert_close(result, expected, rtol=0.0, atol=1e-6)

    return check


BATCH = torch.rand(2, 3, 40, 50, generator=torch.Generator().manual_seed(0))

CASES: dict[str, tuple[Callable[[Ctx], Any], Ok | Fails | Skipped]] = {
    # Sizes in config.json are bounded before anything is built.
    "config-embed-dim-1e7": (damaged_config(embed_dim=10**7, num_heads=1), Fails(ConfigError, r"config\.json: config field 'embed_dim' is 10000000, above its limit")),
    "config-depth-1e6": (damaged_config(depth=10**6), Fails(ConfigError, r"config\.json: config field 'depth' is 1000000, above its limit")),
    "config-num-views-1e9": (damaged_config(num_views=10**9), Fails(ConfigError, r"config\.json: config field 'num_views' is 1000000000, above its limit")),
    "config-mlp-ratio-1e6": (damaged_config(mlp_ratio=1e6), Fails(ConfigError, r"config\.json: config field 'mlp_ratio' is 1000000\.0, above its limit")),
    "config-wide-and-deep": (damaged_config(embed_dim=16384, depth=256, num_heads=128), Fails(ConfigError, r"config\.json: config describes a model of about 1\.65e\+12 parameters")),
    "config-view-seed-65-bits": (damaged_config(view_seed=2**64), Fails(ConfigError, r"config\.json: config field 'view_seed' must lie in \[-2\*\*63, 2\*\*64 - 1\]")),
    "config-nested-past-the-parser": (config_text('{"extra": ' + "[" * 100000 + "]" * 100000 + "}"), Fails(ConfigError, r"config\.json: JSON nested too deeply to read")),
    "config-extra-nested-900-levels": (damaged_config(extra=_nested(900)), Fails(ConfigError, r"config\.json: config field\(s\) \['extra'\] nested more than 32 levels deep")),
    # Shapes in checkpoint files are checked against the bytes and numbering behind them.
    "pth-stray-block-number": (_pth(_stray_block), Fails(CheckpointError, r"pretrain\.pth: cannot infer the architecture: the 5 'blocks_a\.\*' blocks must be numbered 0\.\.4, but tensor 'blocks_a\.99999999\.mlp\.fc1\.bias' has block number 99999999")),
    "pth-expanded-pos-embed": (_pth(_expanded_pos_embed), Fails(CheckpointError, r"pretrain\.pth: tensor '__M__\.pos_embed_v' has shape \(1, 10000000000, 128\) .* stores only 128 values")),
    "pth-without-blocks": (_pth(_without_blocks), Fails(CheckpointError, r"pretrain\.pth: cannot infer the architecture: the checkpoint has no 'blocks_a\.\*' tensors")),
    "pth-pos-embed-not-square": (_pth(lambda s: s.update({"__M__.pos_embed_v": torch.zeros(1, 15, 128)})), Fails(CheckpointError, r"'pos_embed_v' has 15 tokens, not a square grid")),
    "pth-inf-weight": (_pth(_pth_nan), Fails(CheckpointError, r"pretrain\.pth: 1 tensor\(s\) hold NaN or infinite values: blocks_a\.0\.attn\.qkv\.weight")),
    # Non-finite weights and broken stored views are named, not embedded.
    "weights-nan": (_weights(_set_nan("norm_v.weight")), Fails(CheckpointError, r"model\.safetensors: 1 tensor\(s\) hold NaN or infinite values: norm_v\.weight.*check_weights=False")),
    "weights-nan-unchecked": (_weights(_set_nan("norm_v.weight"), check_weights=False), Ok(_loaded_with_nan)),
    "weights-views-nan": (_weights(lambda t: t.update({"audio_views": torch.full((16, 24), float("nan"))})), Fails(CheckpointError, r"model\.safetensors: 'audio_views' holds NaN or infinite values")),
    "weights-views-unchecked-still-checked": (_weights(lambda t: t.update({"visual_views": torch.full((4, 18), float("inf"))}), check_weights=False), Fails(CheckpointError, r"'visual_views' holds NaN")),
    "weights-views-none": (_weights(lambda t: t.update({"audio_views": torch.zeros(0, 24)})), Fails(CheckpointError, r"model\.safetensors: 'audio_views' has shape \(0, 24\), expected \(S, 24\) with at least one view")),
    "weights-views-1d": (_weights(lambda t: t.update({"visual_views": torch.zeros(18)})), Fails(CheckpointError, r"'visual_views' has shape \(18,\), expected \(S, 18\)")),
    # Keywords the docstring names.
    "pretrained-map-location": (lambda c: EquiAVModel.from_pretrained(c.weights(), map_location="cpu"), Ok(lambda m, c: m.device.type == "cpu" or pytest.fail(str(m.device)))),
    "pretrained-map-location-dict": (lambda c: EquiAVModel.from_pretrained(c.weights(), map_location={"cuda:0": "cpu"}), Fails(InvalidInputError, r"map_location must be a device name or torch\.device")),
    "pretrained-device-and-map-location-disagree": (lambda c: EquiAVModel.from_pretrained(c.weights(), device="cpu", map_location="meta"), Fails(InvalidInputError, r"device='cpu' and map_location='meta' disagree")),
    # Arguments of embed_*.
    "embed-audio-batch-size-0": (lambda c: c.model.embed_audio(tone(440.0, RATE), RATE, batch_size=0), Fails(InvalidInputError, r"batch_size must be a positive integer, got 0")),
    "embed-image-batch-size-negative": (lambda c: c.model.embed_image(BATCH, batch_size=-1), Fails(InvalidInputError, r"batch_size must be a positive integer, got -1")),
    "embed-image-batch-size-float": (lambda c: c.model.embed_image(BATCH, batch_size=2.0), Fails(InvalidInputError, r"batch_size must be a positive integer, got 2\.0")),
    "embed-image-batch-tensor": (lambda c: c.model.embed_image(BATCH), Ok(_same_as_each(BATCH))),
    "embed-image-batch-tensor-in-list": (lambda c: c.model.embed_image([BATCH, BATCH[0]]), Ok(_same_as_each(torch.cat([BATCH, BATCH[:1]])))),
    "embed-image-empty-batch-tensor": (lambda c: c.model.embed_image(torch.zeros(0, 3, 5, 5)), Fails(InvalidInputError, r"batch size 0")),
    # Videos: sizes refused before decoding, damage and emptiness named.
    "video-huge-frame": (lambda c: read_video_frames(huge_frame_mov(c.path("huge.mov"))), Fails(VideoDecodeError, r"refusing to decode video .*huge\.mov: its frames are 16000x16000 pixels")),
    "video-header-understates-frame": (lambda c: read_video_frames(huge_frame_mov(c.path("liar.mov"), header=64)), Fails(VideoDecodeError, r"liar\.mov: its frames are 16000x16000 pixels")),
    "video-truncated-moov": (lambda c: c.model.embed_video(_truncated_moov(c)), Fails(VideoDecodeError, r"cut\.mp4 has no audio stream: the file is truncated or damaged \(its 'moov' box claims \d+ bytes but the file ends \d+ bytes into it\)")),
    "video-stream-without-frames": (lambda c: c.model.embed_video(_mkv(c.path("empty.mkv"), 0, tone(440.0, RATE).astype(np.float32))), Fails(VideoDecodeError, r"empty\.mkv: its video stream holds no frames")),
    "video-nan-audio": (lambda c: c.model.embed_video(_mkv(c.path("nan.mkv"), 10, np.full(RATE, np.nan, np.float32))), Fails(InvalidInputError, r"video .*nan\.mkv: its audio stream holds NaN or infinite samples")),
    "video-is-a-url": (lambda c: c.model.embed_video("https://example.com/clip.mp4"), Fails(VideoDecodeError, r"https://example\.com/clip\.mp4: the path is a URL")),
    # Shards.
    "shard-brace-range-4e8": (lambda c: ShardIndex.load(str(c.path("shard-{000000000..400000000}.tar"))), Fails(DatasetError, r"shard-\{000000000\.\.400000000\}\.tar: the brace pattern names more than 100000 shards")),
    "shard-fbank-nan": (_shard_item(_fbank(float("nan"))), Skipped(r"s0\.tar#0 .*stored filterbank holds NaN or infinite values")),
    "shard-fbank-inf": (_shard_item(_fbank(float("inf"))), Skipped(r"s0\.tar#0 .*stored filterbank holds NaN")),
}  # fmt: skip


@pytest.mark.parametrize("case_id", list(CASES))
def test_hostile_input_case(case_id: str, tiny_model: EquiAVModel, saved_tiny: Path, tmp_path: Path) -> None:
    run_case(CASES[case_id], Ctx(tmp_path, tiny_model, saved_tiny))


# ------------------------------------------------------------------------------------------------------------------
# No silent NaN between a file and an embedding
# ------------------------------------------------------------------------------------------------------------------


def _float_tiff(ctx: Ctx) -> Path:
    values = np.full((40, 50), 0.5, np.float32)
    values[3, 4] = np.nan
    path = ctx.path("float.tif")
    Image.fromarray(values, mode="F").save(path)
    return path


def _nan_weights(ctx: Ctx) -> EquiAVModel:
    return _weights(_set_nan("blocks_a.0.mlp.fc1.weight"))(ctx)


NAN_WAVE = np.full(RATE, np.nan, np.float32)
NAN_IMAGE = np.full((40, 50, 3), np.nan, np.float32)

NAN_PATHS: dict[str, tuple[Callable[[Ctx], Any], Fails | Skipped]] = {
    "audio-file": (lambda c: c.model.embed_audio(write_audio(c.path("nan.wav"), NAN_WAVE, RATE, "FLOAT")), Fails(InvalidInputError, r"nan\.wav: waveform contains NaN")),
    "waveform-array": (lambda c: c.model.embed_audio(NAN_WAVE, RATE), Fails(InvalidInputError, r"waveform: waveform contains NaN")),
    "waveform-tensor": (lambda c: c.model.embed_audio(torch.from_numpy(NAN_WAVE), RATE), Fails(InvalidInputError, r"waveform contains NaN")),
    "filterbank-tensor": (lambda c: c.model.encode_audio(torch.full((1, 128, 128), float("nan"))), Fails(InvalidInputError, r"audio filterbank contains NaN")),
    "image-float-tiff": (lambda c: c.model.embed_image(_float_tiff(c)), Fails(InvalidInputError, r"float\.tif: PIL image of mode 'F' contains NaN")),
    "image-pil-mode-f": (lambda c: c.model.embed_image(Image.fromarray(NAN_IMAGE[..., 0], mode="F")), Fails(InvalidInputError, r"images\[0\]: PIL image of mode 'F' contains NaN")),
    "image-numpy": (lambda c: c.model.embed_image(NAN_IMAGE), Fails(InvalidInputError, r"images\[0\]: float image .* contains NaN")),
    "image-tensor": (lambda c: c.model.embed_image(torch.from_numpy(NAN_IMAGE).permute(2, 0, 1)), Fails(InvalidInputError, r"images\[0\]: float image .* contains NaN")),
    "image-batch-tensor": (lambda c: c.model.encode_image(torch.full((1, 3, 64, 64), float("inf"))), Fails(InvalidInputError, r"image tensor contains NaN")),
    "video-soundtrack": (lambda c: c.model.embed_video(_mkv(c.path("nan.mkv"), 10, NAN_WAVE)), Fails(InvalidInputError, r"nan\.mkv: its audio stream holds NaN")),
    "weights-file": (_nan_weights, Fails(CheckpointError, r"model\.safetensors: .*blocks_a\.0\.mlp\.fc1\.weight")),
    "stored-views": (_weights(lambda t: t.update({"audio_views": torch.full((2, 24), float("nan"))})), Fails(CheckpointError, r"'audio_views' holds NaN")),
    "shard-filterbank": (_shard_item(_fbank(float("nan"))), Skipped(r"stored filterbank holds NaN")),
}  # fmt: skip


@pytest.mark.parametrize("path_id", list(NAN_PATHS))
def test_no_silent_nan_anywhere_between_a_file_and_an_embedding(
    path_id: str, tiny_model: EquiAVModel, saved_tiny: Path, tmp_path: Path
) -> None:
    run, expected = NAN_PATHS[path_id]
    ctx = Ctx(tmp_path, tiny_model, saved_tiny)
    expect(lambda: run(ctx), expected, ctx)


# ------------------------------------------------------------------------------------------------------------------
# Resolution order of from_pretrained
# ------------------------------------------------------------------------------------------------------------------


def test_registered_name_is_not_shadowed_by_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = "equiav-tiny-digits"
    packaged = _packaged_dir(name)
    assert name in PRETRAINED and packaged is not None
    decoy = EquiAVModel.from_pretrained(packaged)
    with torch.no_grad():
        decoy.norm_a.weight.fill_(7.0)
    decoy.save_pretrained(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="equiav.hub"):
        loaded = EquiAVModel.from_pretrained(name)
    assert not torch.equal(loaded.norm_a.weight, decoy.norm_a.weight)
    assert torch.equal(loaded.norm_a.weight, EquiAVModel.from_pretrained(packaged).norm_a.weight)
    messages = [r.getMessage() for r in caplog.records if r.name == "equiav.hub"]
    assert any(f"registered model '{name}'" in m and f"./{name}" in m for m in messages), messages
    local = EquiAVModel.from_pretrained(f"./{name}")
    assert torch.equal(local.norm_a.weight, decoy.norm_a.weight)


# ------------------------------------------------------------------------------------------------------------------
# Memory: hostile sizes are refused before anything of their size is allocated
# ------------------------------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = """
import json, resource, sys, time
from pathlib import Path
import torch
from equiav import EquiAVError, EquiAVModel
from equiav.training.datasets.shards import ShardIndex
from equiav.video import read_video_frames
torch.set_num_threads(1)
folder = Path(sys.argv[1])
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
EquiAVModel.from_pretrained(folder / "tiny")
cases = {
    "config-embed-dim": lambda: EquiAVModel.from_pretrained(folder / "wide"),
    "config-depth": lambda: EquiAVModel.from_pretrained(folder / "deep"),
    "config-num-views": lambda: EquiAVModel.from_pretrained(folder / "views"),
    "pth-stray-block": lambda: EquiAVModel.from_pretrained(folder / "stray.pth", config="equiav-tiny"),
    "pth-expanded": lambda: EquiAVModel.from_pretrained(folder / "expanded.pth", config="equiav-tiny"),
    "mov-16000x16000": lambda: read_video_frames(folder / "huge.mov"),
    "shard-braces": lambda: ShardIndex.load(str(folder / "shard-{000000000..400000000}.tar")),
}
report = {}
for name, run in cases.items():
    base, start = peak(), time.perf_counter()
    try:
        run()
        error = None
    except EquiAVError as caught:
        error = type(caught).__name__
    report[name] = {"growth": peak() - base, "seconds": time.perf_counter() - start, "error": error}
print(json.dumps(report))
"""


def test_hostile_sizes_are_refused_in_bounded_memory(tiny_model: EquiAVModel, tmp_path: Path) -> None:
    """Before: 19-31 s and 5-7 GB for the configs, 5.4 GB for the stray block, 80 GB asked for the expanded tensor,
    4.2 GB and 27 s for the 16000 x 16000 frame, out of memory after 44 s for the brace range."""
    tiny_model.save_pretrained(tmp_path / "tiny")
    for name, changes in (
        ("wide", dict(embed_dim=10**7)),
        ("deep", dict(depth=10**6)),
        ("views", dict(num_views=10**9)),
    ):
        shutil.copytree(tmp_path / "tiny", tmp_path / name)
        edit_json(tmp_path / name / "config.json", **changes)
    for name, change in (("stray.pth", _stray_block), ("expanded.pth", _expanded_pos_embed)):
        state = {f"__M__.{k}": v for k, v in tiny_model.state_dict().items()}
        change(state)
        torch.save(state, tmp_path / name)
    huge_frame_mov(tmp_path / "huge.mov")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MEMORY_SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, row in report.items():
        assert row["error"] is not None, (name, row)
        assert row["growth"] < 100e6, (name, row)
        assert row["seconds"] < 10, (name, row)
