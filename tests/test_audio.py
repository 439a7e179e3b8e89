"""Audio front-end: Kaldi fbank parity with torchaudio, resampling, decoding, waveform preparation, model inputs."""

from __future__ import annotations

import math
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from scipy import signal as scipy_signal

from equiav import audio
from equiav.audio import kaldi_fbank, load_audio, load_fbank, prepare_waveform, resample, waveform_to_fbank
from equiav.config import EquiAVConfig
from equiav.errors import AudioDecodeError, InvalidInputError

FBANK_CASES = ["chirp_10s", "fsdd_7_jackson_0_8k", "noise_3s", "short_0p42s", "tone_then_silence_12s"]


@pytest.fixture(scope="module")
def fsdd_file(shared_dir: Path) -> Path:
    return shared_dir / "data" / "fsdd" / "recordings" / "7_jackson_0.wav"


def _noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------------------
# kaldi_fbank
# ------------------------------------------------------------------------------------------------------------------


def test_fixture_holds_exactly_the_tested_cases(fbank_fixture):
    assert sorted({key.split(".")[0] for key in fbank_fixture}) == FBANK_CASES


@pytest.mark.parametrize("case", FBANK_CASES)
def test_kaldi_fbank_matches_torchaudio_fixture(fbank_fixture, case):
    waveform = fbank_fixture[f"{case}.waveform"]
    sample_rate = int(fbank_fixture[f"{case}.sample_rate"])
    expected = fbank_fixture[f"{case}.fbank"].double()
    got = kaldi_fbank(waveform - waveform.mean(), sample_rate).double()
    assert got.shape == expected.shape
    # Within 80 dB of each frame's loudest band: 1e-3 in log energy. Deeper down (the leakage floor of the pure
    # chirp) both sides carry float32 rounding noise of order 1e-12 of the frame's peak power (torchaudio itself
    # differs from a float64 computation by up to 0.013 there), so compare powers with that absolute slack.
    frame_peak = expected.max(dim=-1, keepdim=True).values
    loud = expected >= frame_peak - 8 * math.log(10)
    assert (got - expected)[loud].abs().max() <= 1e-3
    power_error = (got.exp() - expected.exp()).abs()
    assert (power_error <= 1e-3 * expected.exp() + 1e-10 * frame_peak.exp()).all()


def test_load_audio_gives_the_fixture_waveform(fbank_fixture, fsdd_file):
    waveform, sample_rate = load_audio(fsdd_file)
    assert sample_rate == 8000
    torch.testing.assert_close(waveform[0], fbank_fixture["fsdd_7_jackson_0_8k.waveform"], rtol=0, atol=0)


def test_kaldi_fbank_batched_equals_per_clip_over_leading_dims():
    clips = _noise(2, 3, 5000)
    batched = kaldi_fbank(clips, 16000)
    assert batched.shape == (2, 3, 1 + (5000 - 400) // 160, 128)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[i, j], kaldi_fbank(clips[i, j], 16000), rtol=0, atol=1e-5)
    assert kaldi_fbank(clips[:0], 16000).shape == (0, 3, batched.shape[2], 128)


@pytest.mark.parametrize("block_rows", [7, 30, 64])
def test_kaldi_fbank_row_blocking_does_not_change_results(monkeypatch, block_rows):
    clips = _noise(3, 4000)
    expected = kaldi_fbank(clips, 16000)
    monkeypatch.setattr(audio, "_CPU_BLOCK_ROWS", block_rows)
    torch.testing.assert_close(kaldi_fbank(clips, 16000), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("num_mel_bins", "fft_size", "sample_rate"),
    [(128, 512, 16000.0), (128, 256, 8000.0), (32, 512, 16000.0), (23, 512, 22050.0)],
)
def test_mel_bands_hold_every_weight_of_the_dense_bank(num_mel_bins, fft_size, sample_rate):
    """The banded mel product adds exactly the non-zero weights of the dense bank, each once."""
    args = (num_mel_bins, fft_size, sample_rate, 20.0, 0.0, torch.device("cpu"), torch.float32)
    bank = audio._mel_bank(*args)
    rebuilt = torch.zeros_like(bank)
    for low, high, first, end, weights in audio._mel_bands(*args):
        assert rebuilt[low:high, first:end].abs().sum() == 0
        rebuilt[low:high, first:end] = weights
    assert torch.equal(rebuilt, bank)
    assert sum(w.numel() for *_, w in audio._mel_bands(*args)) < bank.numel() / 3


def _brute_force_fbank(
    x: np.ndarray,
    sr: int,
    num_mel_bins: int,
    low_freq: float,
    high_freq: float,
    preemphasis: float,
    remove_dc_offset: bool,
    snip_edges: bool,
    round_to_power_of_two: bool,
) -> np.ndarray:
    """Kaldi's fbank written out frame by frame and filter by filter, in float64."""
    size, hop = int(sr * 0.025), int(sr * 0.010)
    if snip_edges:
        starts = [hop * k for k in range(1 + (len(x) - size) // hop)]
    else:
        starts = [hop * k - (size // 2 - hop // 2) for k in range((len(x) + hop // 2) // hop)]
    fft_size = 2 ** math.ceil(math.log2(size)) if round_to_power_of_two else size
    hann = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / (size - 1)) for n in range(size)])

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    high = high_freq if high_freq > 0 else sr / 2 + high_freq
    edges = [
        mel(low_freq) + i * (mel(high) - mel(low_freq)) / (num_mel_bins + 1) for i in range(num_mel_bins + 2)
    ]
    bank = np.zeros((num_mel_bins, fft_size // 2 + 1))
    for m in range(num_mel_bins):
        for k in range(fft_size // 2):
            z = mel(k * sr / fft_size)
            if edges[m] < z < edges[m + 2]:
                rising = (z - edges[m]) / (edges[m + 1] - edges[m])
                falling = (edges[m + 2] - z) / (edges[m + 2] - edges[m + 1])
                bank[m, k] = min(rising, falling)
    rows = []
    for start in starts:
        index = np.arange(start, start + size)
        index = np.where(index < 0, -index - 1, index)
        index = np.where(index >= len(x), 2 * len(x) - 1 - index, index)
        frame = x[index].copy()
        if remove_dc_offset:
            frame -= frame.mean()
        frame = frame - preemphasis * np.concatenate([frame[:1], frame[:-1]])
        power = np.abs(np.fft.rfft(frame * hann, n=fft_size)) ** 2
        rows.append(np.log(np.maximum(bank @ power, np.finfo(np.float32).eps)))
    return np.array(rows)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(snip_edges=False),
        dict(remove_dc_offset=False, preemphasis=0.0),
        dict(round_to_power_of_two=False, num_mel_bins=40, low_freq=100.0, high_freq=-400.0),
        dict(sample_rate=8000, num_mel_bins=64, high_freq=3000.0, snip_edges=False),
    ],
)
def test_kaldi_fbank_options_match_brute_force(options):
    options = dict(options)
    sr = options.pop("sample_rate", 16000)
    full = dict(num_mel_bins=128, low_freq=20.0, high_freq=0.0, preemphasis=0.97, remove_dc_offset=True)
    full.update(snip_edges=True, round_to_power_of_two=True)
    full.update(options)
    x = (_noise(3000, seed=3) + 0.05 * torch.sin(torch.arange(3000) * 0.3) + 0.02).double()
    got = kaldi_fbank(x, sr, **full).numpy()
    expected = _brute_force_fbank(x.numpy(), sr, **full)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sample_rate, minimum", [(16000, 400), (8000, 200)])
def test_kaldi_fbank_rejects_waveform_shorter_than_one_frame(sample_rate, minimum):
    with pytest.raises(InvalidInputError, match=rf"{minimum - 1} samples.*at least {minimum}"):
        kaldi_fbank(torch.zeros(2, minimum - 1), sample_rate)
    assert kaldi_fbank(torch.zeros(minimum), sample_rate).shape == (1, 128)


def test_kaldi_fbank_rejects_integer_tensors():
    with pytest.raises(InvalidInputError, match="floating-point"):
        kaldi_fbank(torch.zeros(1000, dtype=torch.int16), 16000)


def test_kaldi_fbank_matches_torchaudio_when_installed():
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    for sample_rate, length in [(16000, 16000), (8000, 5000), (22050, 10000)]:
        x = _noise(1, length, seed=length)
        expected = kaldi.fbank(
            x, htk_compat=True, sample_frequency=sample_rate, use_energy=False, window_type="hanning",
            num_mel_bins=128, dither=0.0, frame_shift=10,
        )  # fmt: skip
        torch.testing.assert_close(kaldi_fbank(x[0], sample_rate), expected, rtol=0, atol=1e-3)


# ------------------------------------------------------------------------------------------------------------------
# resample
# ------------------------------------------------------------------------------------------------------------------


def _sines(freqs, phases, times) -> np.ndarray:
    return sum(np.sin(2 * np.pi * f * times + p) for f, p in zip(freqs, phases)) / len(freqs)


@pytest.mark.parametrize("orig, new", [(44100, 16000), (48000, 16000), (22050, 16000), (8000, 16000)])
def test_resample_matches_scipy_and_the_ideal_signal(orig, new):
    nyquist = min(orig, new) / 2
    freqs = np.array([0.05, 0.2, 0.45, 0.7, 0.8]) * nyquist
    phases = np.random.default_rng(orig).uniform(0, 2 * np.pi, len(freqs))
    x = _sines(freqs, phases, np.arange(orig) / orig)
    got = resample(torch.from_numpy(x).float(), orig, new).double().numpy()
    divisor = math.gcd(orig, new)
    reference = scipy_signal.resample_poly(x, new // divisor, orig // divisor)
    ideal = _sines(freqs, phases, np.arange(len(reference)) / new)
    assert got.shape == reference.shape == (new,)
    inner = slice(new // 10, -new // 10)  # both filters see zeros past the ends, differently
    # scipy's default filter (Kaiser beta=5, cutoff at the new Nyquist) already deviates from the ideal signal by
    # about 1e-3 at 0.8 x Nyquist; ours by about 1e-6 (float32 input), so their difference is bounded by 2e-3.
    assert np.abs(got - reference)[inner].max() < 2e-3
    assert np.abs(got - ideal)[inner].max() < 2e-5
    assert np.corrcoef(got, reference)[0, 1] > 0.9999


def test_resample_keeps_a_tone_at_its_frequency_and_removes_content_above_nyquist():
    times = torch.arange(44100, dtype=torch.float64) / 44100
    mix = torch.sin(2 * math.pi * 1000.0 * times) + torch.sin(2 * math.pi * 12000.0 * times)
    out = resample(mix, 44100, 16000)
    spectrum = torch.fft.rfft(out * torch.hann_window(len(out), dtype=torch.float64)).abs()
    assert int(spectrum.argmax()) == 1000  # 1 s of output: bin k is k Hz
    # 12 kHz is above the new 8 kHz Nyquist; it would alias to 4 kHz if it were not filtered out.
    assert spectrum[3990:4010].max() < 1e-4 * spectrum[1000]


def test_resample_is_batched_and_sized_like_scipy():
    x = _noise(2, 3, 1001)
    out = resample(x, 44100, 16000)
    assert out.shape == (2, 3, math.ceil(1001 * 160 / 441))
    torch.testing.assert_close(out[1, 2], resample(x[1, 2], 44100, 16000), rtol=0, atol=1e-6)
    assert resample(x, 16000, 16000) is x


@pytest.mark.parametrize("rate", [0, -8000, 16000.0, None])
def test_resample_rejects_bad_rates(rate):
    with pytest.raises(InvalidInputError, match="orig_sr"):
        resample(torch.zeros(100), rate, 16000)


# ------------------------------------------------------------------------------------------------------------------
# load_audio
# ------------------------------------------------------------------------------------------------------------------


def test_load_audio_reads_fsdd_like_the_wave_module(fsdd_file):
    waveform, sample_rate = load_audio(fsdd_file)
    with wave.open(str(fsdd_file)) as reader:
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
        assert sample_rate == reader.getframerate() == 8000
    assert waveform.dtype == torch.float32 and waveform.shape == (1, len(pcm))
    torch.testing.assert_close(waveform[0], torch.from_numpy(pcm / 32768.0).float(), rtol=0, atol=0)


@pytest.mark.parametrize("extension, tolerance", [("wav", 0.0), ("flac", 0.0), ("ogg", 0.05)])
def test_load_audio_keeps_channels_first(tmp_path, extension, tolerance):
    left = np.sin(np.arange(8000) * 0.05) * 0.5
    right = np.sin(np.arange(8000) * 0.11) * 0.25
    stereo = np.round(np.stack([left, right], axis=1) * 32767) / 32768
    path = tmp_path / f"stereo.{extension}"
    soundfile.write(path, stereo, 16000)
    waveform, sample_rate = load_audio(path)
    assert sample_rate == 16000 and waveform.shape == (2, 8000) and waveform.dtype == torch.float32
    error = (waveform.double().numpy() - stereo.T)[:, 1000:-1000]  # lossy codecs smear the edges
    assert np.abs(error).max() <= tolerance


def test_load_audio_memory_is_one_block_beyond_the_waveform(tmp_path):
    path = tmp_path / "long.wav"
    samples = 60 * 16000
    soundfile.write(path, np.zeros((samples, 2), dtype=np.int16), 16000)
    tracemalloc.start()
    try:
        waveform, _ = load_audio(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert waveform.shape == (2, samples)
    # numpy buffers are traced: a whole-file decode would show the 7.7 MB signal; one 65536-frame block is 0.5 MB.
    assert peak < 1.5e6


def _write_wav(path: Path, samples: int) -> bytes:
    soundfile.write(path, np.full(samples, 0.25), 16000, subtype="PCM_16")
    return path.read_bytes()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("this is a text file, not a RIFF/WAVE file\n" * 20), "cannot decode"),
        (lambda p: p.write_bytes(_write_wav(p, 1000)[:30]), "cannot decode"),
        (lambda p: p.write_bytes(_write_wav(p, 1000)[:1044]), "truncated"),
        (lambda p: _write_wav(p, 0), "no samples"),
    ],
    ids=["missing", "empty", "text", "header-cut", "data-cut", "zero-length"],
)
def test_load_audio_rejects_bad_files_naming_them(tmp_path, make, message):
    path = tmp_path / "clip.wav"
    make(path)
    with pytest.raises(AudioDecodeError, match=message) as caught:
        load_audio(path)
    assert str(path) in str(caught.value)


def test_load_audio_rejects_truncated_flac(tmp_path):
    path = tmp_path / "clip.flac"
    soundfile.write(path, np.sin(np.arange(48000) * 0.05) * 0.5, 16000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AudioDecodeError, match=str(path)):
        load_audio(path)


# ------------------------------------------------------------------------------------------------------------------
# prepare_waveform
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, dtype, expected",
    [
        ([-32768, 0, 16384, 32767], np.int16, [-1.0, 0.0, 0.5, 32767 / 32768]),
        ([-(2**31), 2**30, 2**31 - 1], np.int32, [-1.0, 0.5, (2**31 - 1) / 2**31]),
        ([0, 128, 192, 255], np.uint8, [-1.0, 0.0, 0.5, 127 / 128]),
        ([-128, 64], np.int8, [-1.0, 0.5]),
        ([-0.5, 0.25, 1.0], np.float64, [-0.5, 0.25, 1.0]),
    ],
)
def test_prepare_waveform_scales_pcm(values, dtype, expected):
    for x in (np.array(values, dtype=dtype), torch.from_numpy(np.array(values, dtype=dtype))):
        out = prepare_waveform(x, 16000)
        assert out.dtype == torch.float32 and out.shape == (len(values),)
        torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=0)


def test_prepare_waveform_averages_channels_in_either_layout():
    channels = np.stack([np.full(100, 0.5), np.full(100, -0.1), np.full(100, 0.2)])
    expected = torch.full((100,), 0.2)
    for x in (channels, channels.T, torch.from_numpy(channels).float(), torch.from_numpy(channels.T)):
        torch.testing.assert_close(prepare_waveform(x, 16000), expected)


def test_prepare_waveform_accepts_big_endian_read_only_and_reversed_arrays():
    x = np.array([16384, -16384], dtype=">i2")
    x.flags.writeable = False
    torch.testing.assert_close(prepare_waveform(x, 16000), torch.tensor([0.5, -0.5]))
    reversed_stereo = np.array([[0.1, 0.3], [0.5, 0.7], [0.9, 1.0]], dtype=np.float32)[::-1]
    torch.testing.assert_close(prepare_waveform(reversed_stereo, 16000), torch.tensor([0.95, 0.6, 0.2]))


def test_prepare_waveform_resamples_to_the_target_rate():
    x = np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000).astype(np.float32)
    out = prepare_waveform(x, 8000, target_sample_rate=16000)
    assert out.shape == (16000,)
    torch.testing.assert_close(out, resample(torch.from_numpy(x), 8000, 16000))


@pytest.mark.parametrize(
    "x, message",
    [
        (np.array([0.0, np.nan, 0.1]), "NaN or infinite"),
        (torch.tensor([0.0, float("inf")]), "NaN or infinite"),
        (np.zeros((8, 8)), "shape"),
        (np.zeros((2, 3, 100)), "shape"),
        (np.zeros((20, 100)), "shape"),
        (np.zeros(0), "no samples"),
        (np.array([True, False]), "dtype"),
        (np.zeros(10, dtype=np.int64), "unsupported sample dtype"),
        ([0.0, 0.1], "numpy array or torch.Tensor"),
    ],
)
def test_prepare_waveform_rejects_bad_input_naming_the_source(x, message):
    with pytest.raises(InvalidInputError, match=message) as caught:
        prepare_waveform(x, 16000, source="clip.wav")
    assert "clip.wav" in str(caught.value)


def test_prepare_waveform_requires_a_sample_rate_for_arrays():
    with pytest.raises(InvalidInputError, match="sample_rate is required"):
        prepare_waveform(np.zeros(1000, dtype=np.float32), None)


# ------------------------------------------------------------------------------------------------------------------
# waveform_to_fbank / load_fbank
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_config() -> EquiAVConfig:
    return EquiAVConfig.from_preset("equiav-tiny")


def test_waveform_to_fbank_pads_at_the_end_before_normalizing(tiny_config):
    x = _noise(8000, seed=5)  # 0.5 s -> 48 frames, padded to 128
    out = waveform_to_fbank(x, 16000, tiny_config)
    frames = kaldi_fbank(x - x.mean(), 16000)
    assert frames.shape[0] == 48 and out.shape == (tiny_config.target_length, 128)
    expected = (frames - tiny_config.audio_mean) / tiny_config.audio_std
    torch.testing.assert_close(out[:48], expected, rtol=0, atol=1e-5)
    pad_value = -tiny_config.audio_mean / tiny_config.audio_std
    assert pad_value == pytest.approx(1.0032, abs=1e-4)  # B21: padded frames are about +1, not 0
    torch.testing.assert_close(out[48:], torch.full((80, 128), pad_value), rtol=0, atol=1e-6)


def test_waveform_to_fbank_crops_long_clips_and_ignores_dc(tiny_config):
    x = _noise(48000, seed=6)  # 3 s -> 298 frames, cut to the first 128
    out = waveform_to_fbank(x, 16000, tiny_config)
    frames = kaldi_fbank(x - x.mean(), 16000)[:128]
    torch.testing.assert_close(
        out, (frames - tiny_config.audio_mean) / tiny_config.audio_std, rtol=0, atol=1e-5
    )
    torch.testing.assert_close(waveform_to_fbank(x + 0.3, 16000, tiny_config), out, rtol=0, atol=2e-3)
    # So the samples past the kept frames may be left out (decoders stop there): only the mean moves, by rounding.
    kept = audio.crop_samples(tiny_config)
    assert kaldi_fbank(x[:kept], 16000).shape[0] == len(out) == kaldi_fbank(x[: kept - 1], 16000).shape[0] + 1
    torch.testing.assert_close(waveform_to_fbank(x[:kept], 16000, tiny_config), out, rtol=0, atol=5e-4)


def test_waveform_to_fbank_sliding_windows_cover_the_clip(tiny_config):
    x = _noise(48000, seed=7)
    windows = waveform_to_fbank(x, 16000, tiny_config, windows="sliding")
    frames = (kaldi_fbank(x - x.mean(), 16000) - tiny_config.audio_mean) / tiny_config.audio_std
    assert windows.shape == (3, 128, 128)
    torch.testing.assert_close(windows.reshape(-1, 128)[:298], frames, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        windows[2, 42:], torch.full((86, 128), -tiny_config.audio_mean / tiny_config.audio_std)
    )
    torch.testing.assert_close(windows[0], waveform_to_fbank(x, 16000, tiny_config))


def test_utterance_normalization_standardizes_each_clip_and_ignores_gain(tiny_config):
    # 32 mel bins: every filter spans an FFT bin, so no value sits on the log floor, which a gain does not move.
    tiny_config = tiny_config.replace(num_mel_bins=32)
    config = tiny_config.replace(audio_normalization="utterance")
    x = _noise(8000, seed=9)  # 48 frames, padded to 128
    out = waveform_to_fbank(x, 16000, config)
    frames = kaldi_fbank(x - x.mean(), 16000, num_mel_bins=32).double()
    expected = (frames - frames.mean()) / (2 * frames.std(correction=0))
    torch.testing.assert_close(out[:48].double(), expected, rtol=0, atol=1e-4)
    assert float(out[:48].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(out[:48].std(correction=0)) == pytest.approx(0.5, abs=1e-4)
    assert torch.equal(out[48:], torch.zeros(80, 32))
    # A gain adds a constant to every log-mel value: the "dataset" input moves, the "utterance" one does not.
    moved = waveform_to_fbank(10 * x, 16000, tiny_config) - waveform_to_fbank(x, 16000, tiny_config)
    assert moved[:48].min() > 1  # log(100) / audio_std
    torch.testing.assert_close(waveform_to_fbank(10 * x, 16000, config), out, rtol=0, atol=1e-4)
    silent = waveform_to_fbank(torch.zeros(8000), 16000, config)
    assert torch.equal(silent, torch.zeros_like(silent))


def test_utterance_normalization_of_sliding_windows_uses_the_whole_clip(tiny_config):
    config = tiny_config.replace(audio_normalization="utterance")
    x = _noise(48000, seed=10) * torch.linspace(0.1, 1.0, 48000)
    windows = waveform_to_fbank(x, 16000, config, windows="sliding")
    frames = kaldi_fbank(x - x.mean(), 16000).double()
    expected = (frames - frames.mean()) / (2 * frames.std(correction=0))
    torch.testing.assert_close(windows.reshape(-1, 128)[:298].double(), expected, rtol=0, atol=1e-4)
    assert torch.equal(windows[2, 42:], torch.zeros(86, 128))


def test_waveform_to_fbank_resamples_and_mixes_down_first(tiny_config):
    x = _noise(2, 4000, seed=8)
    mono16k = resample(x.mean(dim=0), 8000, 16000)
    expected = waveform_to_fbank(mono16k, 16000, tiny_config)
    torch.testing.assert_close(waveform_to_fbank(x, 8000, tiny_config), expected, rtol=0, atol=1e-5)


def test_waveform_to_fbank_rejects_bad_arguments(tiny_config):
    with pytest.raises(InvalidInputError, match="windows"):
        waveform_to_fbank(_noise(16000), 16000, tiny_config, windows="center")
    with pytest.raises(InvalidInputError, match=r"clip\.wav.*300 samples"):
        waveform_to_fbank(_noise(300), 16000, tiny_config, source="clip.wav")


def test_load_fbank_on_fsdd_file(fsdd_file, tiny_config):
    waveform, sample_rate = load_audio(fsdd_file)
    expected = waveform_to_fbank(waveform, sample_rate, tiny_config)
    torch.testing.assert_close(load_fbank(fsdd_file, tiny_config), expected, rtol=0, atol=0)
    assert load_fbank(fsdd_file, tiny_config, windows="sliding").shape == (1, 128, 128)
