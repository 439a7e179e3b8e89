"""Hardened input paths: odd sample rates, long or lying audio files, odd paths, non-finite pixels and samples."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from scipy import signal as scipy_signal

from equiav import audio
from equiav.audio import (
    load_audio,
    load_fbank,
    prepare_waveform,
    resample,
    resample_input_length,
    waveform_to_fbank,
)
from equiav.config import EquiAVConfig
from equiav.errors import AudioDecodeError, ConfigError, ImageDecodeError, InvalidInputError
from equiav.image import load_image, preprocess_image

RATE = 16000
COMMON_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000)
ODD_RATES = (16001, 44101, 47999, 7919)


@pytest.fixture(scope="module")
def tiny_config() -> EquiAVConfig:
    return EquiAVConfig.from_preset("equiav-tiny")


def _sine(frequency: float, rate: int, samples: int) -> np.ndarray:
    return np.sin(2 * np.pi * frequency * np.arange(samples) / rate)


def _run_script(script: str, *args: str, timeout: float = 120) -> dict:
    """Run ``script`` in a fresh interpreter (its peak memory is its own) and return the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------------------
# Resampling at any rate
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", ODD_RATES)
def test_odd_rates_resample_quickly_to_the_right_length_and_frequency(rate: int) -> None:
    samples = 2 * rate
    x = torch.from_numpy(_sine(1000.0, rate, samples)).float()
    start = time.perf_counter()
    out = resample(x, rate, RATE)
    elapsed = time.perf_counter() - start
    assert out.shape == (math.ceil(samples * RATE / rate),)
    assert elapsed < 5.0
    ideal = _sine(1000.0, RATE, len(out))
    inner = slice(RATE // 10, -RATE // 10)
    assert np.abs(out.double().numpy() - ideal)[inner].max() < 1e-5
    spectrum = np.abs(np.fft.rfft(out.double().numpy() * np.hanning(len(out))))
    assert np.fft.rfftfreq(len(out), 1 / RATE)[spectrum.argmax()] == pytest.approx(1000.0, abs=0.5)


@pytest.mark.parametrize("rate", [16001, 7919])
def test_odd_rates_agree_with_scipy_resample_poly(rate: int) -> None:
    x = _sine(0.2 * min(rate, RATE), rate, 4000) + 0.5 * _sine(0.6 * min(rate, RATE) / 2, rate, 4000)
    got = resample(torch.from_numpy(x), rate, RATE).numpy()
    divisor = math.gcd(rate, RATE)
    reference = scipy_signal.resample_poly(x, RATE // divisor, rate // divisor)
    assert got.shape == reference.shape
    inner = slice(len(got) // 10, -len(got) // 10)
    assert (
        np.abs(got - reference)[inner].max() < 2e-3
    )  # scipy's own filter is off by about 1e-3 (test_audio.py)


def test_one_hertz_upsamples_a_slow_sine() -> None:
    """The filter reaches 52 samples (52 s) to each side: only the middle of 112 s is away from both ends."""
    x = torch.from_numpy(_sine(0.1, 1, 112))
    start = time.perf_counter()
    out = resample(x, 1, RATE)
    assert time.perf_counter() - start < 10.0
    assert out.shape == (112 * RATE,)
    ideal = np.sin(2 * np.pi * 0.1 * np.arange(len(out)) / RATE)
    assert np.abs(out.numpy() - ideal)[54 * RATE : 58 * RATE].max() < 1e-4


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 96000])
def test_general_path_matches_the_exact_polyphase_filter(monkeypatch, rate: int) -> None:
    x = 0.3 * torch.randn(2, rate, generator=torch.Generator().manual_seed(rate))
    exact = resample(x, rate, RATE)
    monkeypatch.setattr(audio, "_MAX_POLYPHASE_WEIGHTS", 0)
    general = resample(x, rate, RATE)
    assert general.shape == exact.shape
    assert (general - exact).abs().max() < 2e-6


def test_common_rates_keep_the_exact_polyphase_path() -> None:
    for rate in COMMON_RATES:
        if rate != RATE:
            assert audio._uses_polyphase(*audio._reduced(rate, RATE)), rate
    for rate in ODD_RATES:
        assert not audio._uses_polyphase(*audio._reduced(rate, RATE)), rate


@pytest.mark.parametrize("rate", [44100, 8000, 16001, 7919, 1])
def test_resample_input_length_is_all_a_decoder_must_read(rate: int) -> None:
    length = rate * 3 + 500 if rate > 1 else 60
    x = torch.randn(length, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    wanted = 20720
    needed = resample_input_length(wanted, rate, RATE)
    full = resample(x, rate, RATE)[:wanted]
    torch.testing.assert_close(resample(x[:needed], rate, RATE)[:wanted], full, rtol=0, atol=1e-12)


def test_absurd_rates_and_lengths_are_refused_naming_the_rate() -> None:
    with pytest.raises(InvalidInputError, match=r"orig_sr=4611686018427387904 Hz is above"):
        resample(torch.zeros(100), 2**62, RATE)
    with pytest.raises(InvalidInputError, match=r"clip\.wav: sample_rate=4611686018427387904 Hz"):
        prepare_waveform(np.zeros(100), 2**62, source="clip.wav")
    with pytest.raises(
        InvalidInputError, match=r"waveform: resampling 500000 samples from 1 Hz .*max_length"
    ):
        prepare_waveform(np.zeros(500_000), 1)
    with pytest.raises(InvalidInputError, match=r"max_length=100"):
        resample(torch.zeros(101), RATE, 2 * RATE, max_length=100)


def test_odd_rates_take_bounded_memory_and_leave_none_behind() -> None:
    """16,001 Hz used to build a 2 GB table and fail; each odd rate left ~190 MB of cached kernels behind."""
    report = _run_script(
        """
        import json, resource, time
        import numpy as np, torch
        from equiav.audio import prepare_waveform
        torch.set_num_threads(1)
        def rss():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        prepare_waveform(np.zeros(44100, np.float32), 44100)
        base = rss()
        start = time.perf_counter()
        rates = (16001, 44101, 47999, 7919, 22051, 11026, 48001, 96001)
        peaks = []
        for rate in rates:
            prepare_waveform(np.zeros(rate * 3, np.float32), rate)
            peaks.append(rss() - base)
        print(json.dumps({"peaks": peaks, "seconds": time.perf_counter() - start, "base": base}))
        """
    )
    # Three seconds at 96 kHz is 1.2 MB of float32; each call's intermediates are a few MB.
    assert max(report["peaks"]) < 100e6, report
    assert report["peaks"][-1] - report["peaks"][1] < 30e6, report
    assert report["seconds"] < 30, report


# ------------------------------------------------------------------------------------------------------------------
# Long files and lying headers
# ------------------------------------------------------------------------------------------------------------------


def _hour_flac(path: Path) -> Path:
    """One hour of 16 kHz mono silence after a short tone, as FLAC (a few hundred kB on disk)."""
    with soundfile.SoundFile(path, "w", RATE, 1, "PCM_16", format="FLAC") as sink:
        sink.write((0.5 * _sine(440.0, RATE, RATE) * 32767).astype(np.int16))
        silence = np.zeros(RATE * 60, dtype=np.int16)
        for _ in range(59):
            sink.write(silence)
        sink.write(silence[: RATE * 59])
    return path


def test_crop_of_an_hour_long_flac_decodes_only_its_start(tmp_path: Path, tiny_config: EquiAVConfig) -> None:
    path = _hour_flac(tmp_path / "hour.flac")
    report = _run_script(
        """
        import json, resource, sys, time
        import numpy as np, torch
        from equiav.audio import load_fbank
        from equiav.config import EquiAVConfig
        torch.set_num_threads(1)
        config = EquiAVConfig.from_preset("equiav-tiny")
        load_fbank(sys.argv[2], config)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        fbank = load_fbank(sys.argv[1], config)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"extra_bytes": (after - before) * 1024, "seconds": seconds, "shape": list(fbank.shape)}))
        """,
        str(path),
        str(_write(tmp_path / "warm.wav", _sine(440.0, RATE, RATE))),
    )
    decoded_bytes = 3600 * RATE * 4  # the whole file as float32: 230 MB
    assert report["shape"] == [tiny_config.target_length, tiny_config.num_mel_bins]
    assert report["extra_bytes"] < 0.05 * decoded_bytes, report
    assert report["seconds"] < 2.0, report
    first_seconds = load_audio(path, max_frames=3 * RATE)[0]
    expected = waveform_to_fbank(first_seconds[0], RATE, tiny_config)
    torch.testing.assert_close(load_fbank(path, tiny_config), expected, rtol=0, atol=5e-4)


def _write(path: Path, values: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> Path:
    soundfile.write(path, values, rate, subtype=subtype)
    return path


def _flac_with_count(path: Path, count: int) -> tuple[Path, np.ndarray]:
    """A one-second FLAC whose STREAMINFO claims ``count`` samples (0: unknown length)."""
    values = np.round(0.5 * _sine(440.0, RATE, RATE) * 32767) / 32768
    _write(path, values)
    data = bytearray(path.read_bytes())
    fields = int.from_bytes(data[18:26], "big")
    data[18:26] = ((fields & ~((1 << 36) - 1)) | count).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path, values


def test_flac_of_unknown_length_is_read_to_its_end(tmp_path: Path) -> None:
    path, values = _flac_with_count(tmp_path / "unknown.flac", 0)
    waveform, rate = load_audio(path)
    assert rate == RATE
    torch.testing.assert_close(waveform[0].double(), torch.from_numpy(values), rtol=0, atol=0)


def test_flac_declaring_fewer_samples_keeps_the_rest(tmp_path: Path) -> None:
    path, values = _flac_with_count(tmp_path / "fewer.flac", 8000)
    waveform, _ = load_audio(path)
    torch.testing.assert_close(waveform[0].double(), torch.from_numpy(values), rtol=0, atol=0)


def test_flac_declaring_2_36_samples_allocates_nothing_of_that_size(tmp_path: Path, tiny_config) -> None:
    path, _ = _flac_with_count(tmp_path / "huge.flac", 2**36 - 1)
    for load in (
        load_audio,
        lambda p: load_fbank(p, tiny_config),
        lambda p: load_fbank(p, tiny_config, windows="sliding"),
    ):
        with pytest.raises(
            AudioDecodeError, match=r"huge\.flac: truncated audio file: .*68719476735 frames but only 16000"
        ):
            load(path)
    assert audio._first_capacity(2**36, None, path.stat().st_size, 1) < 10 * path.stat().st_size


def _au(path: Path, data_size: int) -> Path:
    _write(path, 0.25 * _sine(440.0, RATE, RATE))
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack(">I", data_size)
    path.write_bytes(bytes(data))
    return path


def test_au_header_claiming_more_bytes_than_the_file_holds_is_truncated(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match=r"big\.au: truncated audio file: .*1000000000 bytes .*32000"):
        load_audio(_au(tmp_path / "big.au", 10**9))
    assert load_audio(_au(tmp_path / "unknown.au", 0xFFFFFFFF))[0].shape == (1, RATE)


def test_wav_with_zero_data_length_loads_the_samples_that_follow(tmp_path: Path) -> None:
    """Streaming writers leave the data chunk length 0; libsndfile alone reads no sample of such a file."""
    values = np.round(0.5 * _sine(440.0, RATE, RATE) * 32767) / 32768
    path = _write(tmp_path / "stream.wav", values)
    data = bytearray(path.read_bytes())
    data[data.index(b"data") + 4 : data.index(b"data") + 8] = bytes(4)
    path.write_bytes(bytes(data))
    with soundfile.SoundFile(path) as plain:
        assert plain.frames == 0
    waveform, _ = load_audio(path)
    torch.testing.assert_close(waveform[0].double(), torch.from_numpy(values), rtol=0, atol=0)


def test_load_audio_max_frames_stops_early(tmp_path: Path) -> None:
    path = _write(tmp_path / "tone.wav", 0.25 * _sine(440.0, RATE, RATE), subtype="FLOAT")
    assert load_audio(path, max_frames=1234)[0].shape == (1, 1234)
    torch.testing.assert_close(load_audio(path, max_frames=1234)[0], load_audio(path)[0][:, :1234])
    with pytest.raises(InvalidInputError, match="max_frames"):
        load_audio(path, max_frames=0)


# ------------------------------------------------------------------------------------------------------------------
# Messages that say what is wrong
# ------------------------------------------------------------------------------------------------------------------


def test_huge_samples_are_blamed_on_the_file(tmp_path: Path, tiny_config: EquiAVConfig) -> None:
    values = 0.25 * _sine(440.0, RATE, RATE)
    values[100] = 1e30
    path = _write(tmp_path / "loud.wav", values, subtype="FLOAT")
    with pytest.raises(InvalidInputError, match=r"loud\.wav: samples too large: the peak magnitude 1e\+30"):
        load_fbank(path, tiny_config)


def test_config_constants_are_named_when_they_break_the_filterbank(tiny_config: EquiAVConfig) -> None:
    x = 0.25 * _sine(440.0, RATE, RATE)
    with pytest.raises(ConfigError, match=r"config field 'audio_std' = 1e-40"):
        waveform_to_fbank(x, RATE, tiny_config.replace(audio_std=1e-40))
    with pytest.raises(ConfigError, match=r"'frame_length_ms'.*frame_length_ms=1e-09") as caught:
        waveform_to_fbank(x, RATE, tiny_config.replace(frame_length_ms=1e-9))
    assert "waveform" not in str(caught.value)


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _loop(path: Path) -> Path:
    os.symlink(path.with_name("other"), path)
    os.symlink(path, path.with_name("other"))
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.mkdir() or p, "is a directory"),
        (_fifo, r"is not a regular file \(a FIFO, socket or device\)"),
        (_loop, "is a symbolic link loop"),
    ],
    ids=["directory", "fifo", "symlink-loop"],
)
def test_odd_paths_say_what_they_are_and_never_block(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path / "input")
    with pytest.raises(AudioDecodeError, match=rf"input: cannot read audio: the path {reason}"):
        load_audio(path)
    with pytest.raises(ImageDecodeError, match=rf"cannot read image .*input: the path {reason}"):
        load_image(path)


def test_urls_are_not_fetched_and_keep_their_spelling(tiny_config: EquiAVConfig) -> None:
    url = "https://example.com/one.wav"
    with pytest.raises(AudioDecodeError, match=r"^https://example\.com/one\.wav: .*URLs are not fetched"):
        load_fbank(url, tiny_config)
    with pytest.raises(ImageDecodeError, match=r"https://example\.com/one\.png: the path is a URL"):
        load_image("https://example.com/one.png")


def test_file_names_that_are_not_utf8_are_named_with_repr(tmp_path: Path) -> None:
    missing = str(tmp_path) + "/x\udcff.wav"
    with pytest.raises(AudioDecodeError, match="audio file not found") as caught:
        load_audio(missing)
    assert repr(missing) in str(caught.value)
    str(caught.value).encode("utf-8")
    with pytest.raises(ImageDecodeError, match="does not exist") as caught:
        load_image(str(tmp_path) + "/x\udcff.png")
    str(caught.value).encode("utf-8")
    # A file whose name really holds the byte 0xff is read.
    values = np.round(0.25 * _sine(440.0, RATE, 800) * 32767) / 32768
    real = os.fsdecode(os.fsencode(str(tmp_path)) + b"/y\xff.wav")
    os.rename(_write(tmp_path / "y.wav", values), real)
    torch.testing.assert_close(load_audio(real)[0][0].double(), torch.from_numpy(values), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixels_are_refused_from_every_image_path(tmp_path: Path, bad: float) -> None:
    pixels = np.full((8, 8), 0.5, np.float32)
    pixels[3, 4] = bad
    path = tmp_path / "float.tif"
    Image.fromarray(pixels, mode="F").save(path)
    with pytest.raises(
        InvalidInputError, match=r"float\.tif: PIL image of mode 'F' contains NaN or infinite"
    ):
        preprocess_image(path)
    with pytest.raises(InvalidInputError, match=r"mode 'F' contains NaN or infinite"):
        preprocess_image(Image.fromarray(pixels, mode="F"))
    for array in (pixels, torch.from_numpy(pixels)):
        with pytest.raises(InvalidInputError, match="NaN or infinite"):
            preprocess_image(array)


def test_empty_pil_image_is_an_input_error() -> None:
    with pytest.raises(InvalidInputError, match="PIL image of 0x0 pixels"):
        preprocess_image(Image.new("RGB", (0, 0)))


def test_decoder_running_out_of_memory_is_a_decode_error_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "lying.png"
    Image.new("RGB", (4, 4)).save(path)

    def exhausted(self: Image.Image) -> None:
        raise MemoryError

    monkeypatch.setattr(Image.Image, "load", exhausted)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", exhausted)
    with pytest.raises(ImageDecodeError, match=r"lying\.png: its header's sizes exhaust memory"):
        load_image(path)
