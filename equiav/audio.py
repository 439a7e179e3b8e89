"""Audio front-end: decoding, resampling and the Kaldi log-mel filterbank that EquiAV's audio tower reads.

Everything here is plain torch (no torchaudio), batched over leading dimensions, and reproduces the authors' input
pipeline (reference section 7.2): mono 16 kHz waveform -> minus its mean -> Kaldi fbank (HTK mel, symmetric Hann
window, 25 ms / 10 ms frames, power spectrum, log with a float32-eps floor) -> zero-pad or cut to ``target_length``
frames -> ``(fbank - audio_mean) / audio_std``.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import all_finite
from .config import EquiAVConfig
from .errors import AudioDecodeError, ConfigError, InvalidInputError
from .paths import file_problem, shown

__all__ = [
    "audio_input_to_fbanks",
    "audio_inputs_to_fbanks",
    "kaldi_fbank",
    "load_audio",
    "load_fbank",
    "prepare_waveform",
    "resample",
    "waveform_to_fbank",
]

MAX_CHANNELS = 8
_READ_BLOCK_FRAMES = 1 << 16
_LOG_FLOOR = torch.finfo(torch.float32).eps


# ----------------------------------------------------------------------------------------------------------------
# Kaldi filterbank
# ----------------------------------------------------------------------------------------------------------------


def _mel(freq: Tensor | float) -> Tensor | float:
    """HTK mel scale, evaluated the way Kaldi does (natural log, 1127 factor)."""
    if isinstance(freq, Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


@lru_cache(maxsize=32)
def _mel_bank(
    num_mel_bins: int,
    fft_size: int,
    sample_rate: float,
    low_freq: float,
    high_freq: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Triangular mel weights as a (fft_size // 2 + 1, num_mel_bins) matrix, ready for ``power @ bank``.

    The triangles are computed in ``dtype`` with Kaldi's operation order (edges equally spaced in mel, slopes in mel
    units, negative parts clipped) so that the weights round as Kaldi's do; low filters narrower than one FFT bin
    (128 bins at 8 kHz) get no weight at all and sit on the log floor, as in Kaldi. The Nyquist bin gets zero weight.
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise InvalidInputError(
            f"mel range must satisfy 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz); "
            f"got low_freq={low_freq}, high_freq={high_freq}"
        )
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    mel_step = (mel_high - mel_low) / (num_mel_bins + 1)
    index = torch.arange(num_mel_bins, dtype=dtype).unsqueeze(1)
    left = mel_low + index * mel_step
    center = mel_low + (index + 1.0) * mel_step
    right = mel_low + (index + 2.0) * mel_step
    bin_mel = _mel((sample_rate / fft_size) * torch.arange(fft_size // 2, dtype=dtype)).unsqueeze(0)
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    weights = torch.minimum(rising, falling).clamp_min(0.0)
    weights = F.pad(weights, (0, 1))
    return weights.t().contiguous().to(device)


# Bands of ``_mel_bands``: on one core, 8 bands of 16 of the 128 filters ran the mel step of 2048 frames in 0.37 ms
# against 2.1 ms for the dense (257, 128) product; 4 or 32 bands were slower.
_MEL_BANDS = 8


@lru_cache(maxsize=32)
def _mel_bands(
    num_mel_bins: int,
    fft_size: int,
    sample_rate: float,
    low_freq: float,
    high_freq: float,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[tuple[int, int, int, int, Tensor], ...]:
    """``_mel_bank`` cut into dense blocks (first bin, end bin, first filter, end filter, weights).

    Each FFT bin feeds at most two neighbouring triangles, so 98 % of the dense bank is zero. A band of consecutive
    filters only reads the bins under its triangles; the bands' products add the same non-zero terms as the dense
    product. A band whose filters have no weight at all is left out (its outputs are zero).
    """
    bank = _mel_bank(num_mel_bins, fft_size, sample_rate, low_freq, high_freq, device, dtype)
    per_band = -(-num_mel_bins // _MEL_BANDS)
    bands = []
    for first in range(0, num_mel_bins, per_band):
        end = min(first + per_band, num_mel_bins)
        used = torch.nonzero(bank[:, first:end].abs().sum(dim=1)).flatten()
        if len(used):
            low, high = int(used[0]), int(used[-1]) + 1
            bands.append((low, high, first, end, bank[low:high, first:end].contiguous()))
    return tuple(bands)


@lru_cache(maxsize=32)
def _hann(window_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Symmetric Hann window (Kaldi's "hanning", i.e. ``periodic=False``)."""
    return torch.hann_window(window_size, periodic=False, dtype=dtype, device=device)


def _frame_geometry(sample_rate: float, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int]:
    """Samples per frame and per hop, truncated the way Kaldi truncates them."""
    window_size = int(sample_rate * frame_length_ms * 0.001)
    hop = int(sample_rate * frame_shift_ms * 0.001)
    if window_size < 2 or hop < 1:
        raise InvalidInputError(
            f"frame_length_ms={frame_length_ms} and frame_shift_ms={frame_shift_ms} at {sample_rate} Hz give "
            f"{window_size}-sample frames with a {hop}-sample hop; need at least 2 and 1"
        )
    return window_size, hop


def _reflect_for_centered_frames(waveform: Tensor, window_size: int, hop: int) -> tuple[Tensor, int]:
    """Kaldi's ``snip_edges=False`` framing: mirror the signal at both ends so frame k is centred on k * hop."""
    length = waveform.shape[-1]
    num_frames = (length + hop // 2) // hop
    offset = window_size // 2 - hop // 2
    positions = torch.arange(-offset, (num_frames - 1) * hop - offset + window_size, device=waveform.device)
    positions = torch.where(positions < 0, -positions - 1, positions)
    positions = torch.where(positions >= length, 2 * length - 1 - positions, positions)
    return waveform[..., positions], num_frames


def kaldi_fbank(
    waveform: Tensor,
    sample_rate: float,
    *,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    preemphasis: float = 0.97,
    remove_dc_offset: bool = True,
    snip_edges: bool = True,
    round_to_power_of_two: bool = True,
) -> Tensor:
    """Kaldi log-mel filterbank of ``waveform`` (..., N) -> (..., frames, num_mel_bins).

    Equal (to float32 rounding) to ``torchaudio.compliance.kaldi.fbank`` with ``htk_compat=True, use_energy=False,
    window_type='hanning', dither=0.0``: per frame remove the DC offset, pre-emphasise, apply a symmetric Hann window,
    zero-pad to a power of two, take the power spectrum, apply HTK-mel triangles and take the log (floored at the
    float32 eps). ``high_freq <= 0`` is an offset from the Nyquist frequency, as in Kaldi. The signal must hold at
    least one frame (``frame_length_ms``) of samples.
    """
    if not isinstance(waveform, Tensor) or not waveform.is_floating_point():
        raise InvalidInputError(f"waveform must be a floating-point torch.Tensor, got {_describe(waveform)}")
    if not (isinstance(sample_rate, int | float | np.number) and sample_rate > 0):
        raise InvalidInputError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    if not (isinstance(num_mel_bins, int) and num_mel_bins > 3):
        raise InvalidInputError(f"num_mel_bins must be an integer > 3, got {num_mel_bins!r}")
    window_size, hop = _frame_geometry(sample_rate, frame_length_ms, frame_shift_ms)
    length = waveform.shape[-1] if waveform.dim() else 0
    if length < window_size:
        raise InvalidInputError(
            f"waveform has {length} samples, but one {frame_length_ms} ms frame at {sample_rate} Hz needs at "
            f"least {window_size}"
        )
    fft_size = 1 << (window_size - 1).bit_length() if round_to_power_of_two else window_size
    signal = waveform.reshape(-1, length)
    if snip_edges:
        num_frames = 1 + (length - window_size) // hop
    else:
        signal, num_frames = _reflect_for_centered_frames(signal, window_size, hop)
    frames = signal.unfold(-1, window_size, hop)[:, :num_frames]
    bands = _mel_bands(
        num_mel_bins, fft_size, float(sample_rate), low_freq, high_freq, waveform.device, waveform.dtype
    )
    window = _hann(window_size, waveform.device, waveform.dtype)
    out = _log_mel_rows(frames, fft_size, window, bands, num_mel_bins, preemphasis, remove_dc_offset)
    return out.reshape(*waveform.shape[:-1], num_frames, num_mel_bins)


# Rows (frames) processed together on the CPU. Whole-batch intermediates (65 MB per stage for 32 ten-second clips)
# fall out of the cache. On one AVX-512 core, 32 ten-second clips took 46.9 ms in blocks of 1,024 rows, 48.3 ms in
# blocks of 2,048, 48.1 ms of 512 and 57.6 ms of 256 (``benchmarks/bench_fbank.py --block-rows``). On accelerators
# the whole batch goes at once.
_CPU_BLOCK_ROWS = 1024


def _row_blocks(num_clips: int, num_frames: int, block_rows: int) -> list[tuple[int, int, int, int]]:
    """(first clip, end clip, first frame, end frame) blocks of about ``block_rows`` frames, in row-major order."""
    if num_frames >= block_rows:
        return [
            (clip, clip + 1, start, min(start + block_rows, num_frames))
            for clip in range(num_clips)
            for start in range(0, num_frames, block_rows)
        ]
    step = block_rows // num_frames
    return [(first, min(first + step, num_clips), 0, num_frames) for first in range(0, num_clips, step)]


def _log_mel_rows(
    frames: Tensor,
    fft_size: int,
    window: Tensor,
    bands: tuple[tuple[int, int, int, int, Tensor], ...],
    num_mel_bins: int,
    preemphasis: float,
    remove_dc_offset: bool,
) -> Tensor:
    """Log mel energies of every frame in ``frames`` (clips, frames, window) -> (clips * frames, mel bins).

    The per-frame steps follow Kaldi's order (DC removal, pre-emphasis with the first sample replicated, window),
    written into a zero-padded buffer that is reused from block to block so that one rfft per block needs no copy.
    """
    num_clips, num_frames, window_size = frames.shape
    block_rows = _CPU_BLOCK_ROWS if frames.device.type == "cpu" else num_clips * num_frames
    blocks = _row_blocks(num_clips, num_frames, block_rows)
    capacity = max(((end - first) * (stop - start) for first, end, start, stop in blocks), default=0)
    padded = frames.new_zeros(capacity, fft_size)
    out = frames.new_zeros(num_clips * num_frames, num_mel_bins)
    for first, end, start, stop in blocks:
        rows = (end - first) * (stop - start)
        chunk = padded[:rows].view(end - first, stop - start, fft_size)[..., :window_size]
        source = frames[first:end, start:stop]
        if remove_dc_offset:
            torch.sub(source, source.mean(dim=-1, keepdim=True), out=chunk)
        else:
            chunk.copy_(source)
        chunk[..., 1:] -= preemphasis * chunk[..., :-1]
        chunk[..., 0] *= 1.0 - preemphasis
        chunk *= window
        spectrum = torch.view_as_real(torch.fft.rfft(padded[:rows]))
        power = spectrum[..., 0].square().addcmul_(spectrum[..., 1], spectrum[..., 1])
        row = first * num_frames + start
        for low, high, first_filter, end_filter, weights in bands:
            out[row : row + rows, first_filter:end_filter] = power[:, low:high] @ weights
    return out.clamp_min_(_LOG_FLOOR).log_()


# ----------------------------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------------------------

_SINC_ZERO_CROSSINGS = 48
_SINC_ROLLOFF = 0.94
_KAISER_BETA = 10.0
# The exact polyphase filter holds up * (down + 2 * half_width) weights for reduced factors up / down. Every common
# rate needs at most 349,000 (11,025 Hz); 16,001 Hz would need 258 million (2 GB in float64), so larger tables go to
# ``_resample_general`` instead.
_MAX_POLYPHASE_WEIGHTS = 1 << 20
# ``_resample_general`` tabulates the filter at fractional positions spaced by at most 1 / _KERNEL_OVERSAMPLING of a
# zero crossing and interpolates linearly between them.
_KERNEL_OVERSAMPLING = 4096
# Output samples times taps that ``_resample_general`` evaluates at once (a few MB of intermediates).
_GENERAL_BLOCK = 1 << 18
MAX_SAMPLE_RATE = 1 << 26
"""Highest sample rate accepted, in Hz (67 MHz: above every audio, DSD or ultrasound recorder)."""
MAX_RESAMPLED_LENGTH = 1 << 31
"""Longest resampled signal ``resample`` produces by default, in samples (37 hours at 16 kHz, 8.6 GB in float32)."""


def _cutoff(up: int, down: int) -> float:
    """Low-pass cutoff in units of the input Nyquist frequency: the rolloff times the lower of the two Nyquists."""
    return _SINC_ROLLOFF * min(1.0, up / down)


def _half_width(up: int, down: int) -> int:
    """Input samples on each side of an output sample that its filter reads."""
    return math.ceil(_SINC_ZERO_CROSSINGS / _cutoff(up, down))


def _windowed_sinc(offset: Tensor, cutoff: float, half_width: int) -> Tensor:
    """Low-pass sinc with ``cutoff`` at ``offset`` input samples from its centre, tapered by a Kaiser window that is
    zero beyond ``half_width`` samples."""
    window_arg = (1.0 - (offset / half_width).square()).clamp_min(0.0).sqrt()
    window = torch.special.i0(_KAISER_BETA * window_arg) / torch.special.i0(torch.tensor(_KAISER_BETA))
    window = torch.where(offset.abs() <= half_width, window, torch.zeros_like(window))
    return cutoff * torch.sinc(cutoff * offset) * window


@lru_cache(maxsize=8)
def _resample_kernels(up: int, down: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, int]:
    """One windowed-sinc filter per output phase, as (up, 1, taps) conv1d weights, and the left padding they need.

    Output sample ``j = up * q + p`` sits at input position ``q * down + p * down / up``. Its filter is a low-pass
    sinc with cutoff ``rolloff * min(1, up / down)`` (in units of the input Nyquist frequency), tapered by a Kaiser
    window that spans ``_SINC_ZERO_CROSSINGS`` zero crossings on each side.
    """
    cutoff = _cutoff(up, down)
    half_width = _half_width(up, down)
    taps = torch.arange(-half_width, down + half_width, dtype=torch.float64)
    phase = torch.arange(up, dtype=torch.float64).unsqueeze(1) * down / up
    kernels = _windowed_sinc(phase - taps, cutoff, half_width)
    return kernels.unsqueeze(1).to(device=device, dtype=dtype), half_width


def _uses_polyphase(up: int, down: int) -> bool:
    """Whether the exact polyphase table of the reduced factors ``up / down`` is small enough to build."""
    return up * (down + 2 * _half_width(up, down)) <= _MAX_POLYPHASE_WEIGHTS


def _resample_polyphase(flat: Tensor, up: int, down: int, out_length: int) -> Tensor:
    """(rows, 1, N) -> (rows, out_length) with the exact polyphase filter, as one strided conv1d."""
    kernels, half_width = _resample_kernels(up, down, flat.device, flat.dtype)
    steps = -(-out_length // up)
    right_pad = max(0, (steps - 1) * down + kernels.shape[-1] - half_width - flat.shape[-1])
    padded = F.pad(flat, (half_width, right_pad))
    phases = F.conv1d(padded, kernels, stride=down)[..., :steps]
    return phases.transpose(1, 2).reshape(flat.shape[0], steps * up)[:, :out_length]


@lru_cache(maxsize=4)
def _phase_table(up: int, down: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The filter of ``_resample_kernels`` at ``phases + 1`` evenly spaced fractional positions -> (phases + 1, taps).

    Row ``i`` holds the weights of the ``2 * half_width`` input samples ``n = floor(t) + 1 - half_width, ...`` around
    a position ``t`` whose fractional part is ``i / phases``. ``phases = ceil(_KERNEL_OVERSAMPLING * cutoff)``, so
    neighbouring rows are at most 1 / 4096 of a zero crossing apart, and the table holds about 400,000 weights
    whatever the rates.
    """
    cutoff, half_width = _cutoff(up, down), _half_width(up, down)
    phases = math.ceil(_KERNEL_OVERSAMPLING * cutoff)
    fraction = torch.arange(phases + 1, dtype=torch.float64).unsqueeze(1) / phases
    taps = torch.arange(1 - half_width, half_width + 1, dtype=torch.float64)
    return _windowed_sinc(taps - fraction, cutoff, half_width).to(device=device, dtype=dtype)


def _general_weights(first: int, count: int, up: int, down: int, table: Tensor) -> tuple[Tensor, Tensor]:
    """Input indices (into the signal padded by ``half_width`` zeros on each side) and weights of ``count`` outputs.

    Output ``j`` sits at input position ``t = j * down / up``, split exactly (in integers) into ``floor(t)`` and a
    remainder; its weights are interpolated linearly between the two rows of ``table`` around that fraction.
    """
    phases, taps = table.shape[0] - 1, table.shape[1]
    position = torch.arange(first, first + count, dtype=torch.int64, device=table.device) * down
    base = position // up
    scaled = (position - base * up) * phases
    row = scaled // up
    weight = ((scaled - row * up).to(torch.float64) / up).to(table.dtype).unsqueeze(1)
    weights = torch.lerp(table[row], table[row + 1], weight)
    index = base.unsqueeze(1) + torch.arange(1, taps + 1, device=table.device)
    return index, weights


def _resample_general(flat: Tensor, up: int, down: int, out_length: int) -> Tensor:
    """(rows, 1, N) -> (rows, out_length) with a windowed sinc evaluated at each output's fractional position.

    The same filter as the polyphase path (Kaiser window of ``_SINC_ZERO_CROSSINGS`` zero crossings, same cutoff),
    interpolated from a fixed table: its weights differ from the exact ones by under 1e-7 of the peak, so the output
    differs by a few 1e-7 of full scale. Memory is ``_GENERAL_BLOCK`` weights at a time whatever the rates; time is
    about ``2 * half_width`` multiply-adds per output (about 100 times ``max(1, down / up)``).
    """
    half_width = _half_width(up, down)
    signal = F.pad(flat[:, 0], (half_width, half_width))
    table = _phase_table(up, down, signal.device, signal.dtype)
    out = signal.new_empty(signal.shape[0], out_length)
    block = max(1, _GENERAL_BLOCK // table.shape[1])
    for first in range(0, out_length, block):
        count = min(block, out_length - first)
        index, weights = _general_weights(first, count, up, down, table)
        out[:, first : first + count] = (signal[:, index] * weights).sum(dim=-1)
    return out


def _check_rate(name: str, rate: object) -> int:
    """``rate`` as an int, if it is a positive integer number of Hz up to ``MAX_SAMPLE_RATE``."""
    if not isinstance(rate, int | np.integer) or isinstance(rate, bool) or rate <= 0:
        raise InvalidInputError(f"{name} must be a positive integer sample rate, got {rate!r}")
    if rate > MAX_SAMPLE_RATE:
        raise InvalidInputError(
            f"{name}={rate} Hz is above the highest sample rate accepted ({MAX_SAMPLE_RATE} Hz)"
        )
    return int(rate)


def _reduced(orig_sr: int, new_sr: int) -> tuple[int, int]:
    """The resampling ratio ``new / orig`` in lowest terms, as (up, down)."""
    divisor = math.gcd(orig_sr, new_sr)
    return new_sr // divisor, orig_sr // divisor


def resampled_length(length: int, orig_sr: int, new_sr: int) -> int:
    """Samples that ``resample`` makes of ``length`` samples: ``ceil(length * new_sr / orig_sr)``."""
    up, down = _reduced(_check_rate("orig_sr", orig_sr), _check_rate("new_sr", new_sr))
    return -(-length * up // down)


def resample_input_length(out_length: int, orig_sr: int, new_sr: int) -> int:
    """Leading input samples that determine the first ``out_length`` samples ``resample`` puts out.

    A decoder may stop there: ``resample(x[:n])[:out_length]`` equals ``resample(x)[:out_length]`` up to float
    rounding for any ``n`` at least this.
    """
    up, down = _reduced(_check_rate("orig_sr", orig_sr), _check_rate("new_sr", new_sr))
    if up == down:
        return out_length
    half_width = _half_width(up, down)
    if _uses_polyphase(up, down):
        return (max(out_length - 1, 0) // up + 1) * down + half_width
    return max(out_length - 1, 0) * down // up + half_width + 1


def resample(
    waveform: Tensor, orig_sr: int, new_sr: int, *, max_length: int = MAX_RESAMPLED_LENGTH
) -> Tensor:
    """Band-limited resampling of ``waveform`` (..., N) from ``orig_sr`` to ``new_sr`` Hz -> (..., ceil(N * new / orig)).

    A windowed-sinc filter (Kaiser window) with the rates reduced by their gcd. Content below 85 % of the lower
    Nyquist frequency passes with under 1e-5 gain error, content above it is attenuated by more than 80 dB, and the
    band in between is the filter's transition. The signal is taken as zero outside its ends (like
    ``scipy.signal.resample_poly``), so the first and last few milliseconds taper. When the reduced factors are small
    (every common rate) the filter runs as one exact polyphase conv1d; otherwise (e.g. 16,001 or 7,919 Hz) the same
    filter is interpolated from a fixed table at each output's position (see ``_resample_general``), so any rate up
    to ``MAX_SAMPLE_RATE`` takes bounded memory. A result longer than ``max_length`` samples is refused. On CUDA,
    cuDNN may run the polyphase filter in TF32 (about 1e-3 relative error) unless ``torch.backends.cudnn.allow_tf32``
    is off.
    """
    orig_sr, new_sr = _check_rate("orig_sr", orig_sr), _check_rate("new_sr", new_sr)
    if not isinstance(waveform, Tensor) or not waveform.is_floating_point() or waveform.dim() == 0:
        raise InvalidInputError(
            f"waveform must be a floating-point torch.Tensor (..., N), got {_describe(waveform)}"
        )
    if orig_sr == new_sr:
        return waveform
    up, down = _reduced(orig_sr, new_sr)
    length = waveform.shape[-1]
    out_length = -(-length * up // down)
    if out_length > max_length:
        raise InvalidInputError(
            f"resampling {length} samples from {orig_sr} Hz to {new_sr} Hz gives {out_length} samples, more than "
            f"max_length={max_length}"
        )
    flat = waveform.reshape(-1, 1, length)
    method = _resample_polyphase if _uses_polyphase(up, down) else _resample_general
    return method(flat, up, down, out_length).reshape(*waveform.shape[:-1], out_length)


# ----------------------------------------------------------------------------------------------------------------
# Decoding and waveform preparation
# ----------------------------------------------------------------------------------------------------------------

# libsndfile notes a RIFF/AIFF/AU length field that runs past the end of the file as "data : N (should be M)".
_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND|Data Size)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers leave these placeholders in the length field; such files are complete, not truncated.
_PLACEHOLDER_LENGTHS = {0, 0xFFFFFFFF, 0x7FFFFFFF}
# Frame counts from this on mean "unknown length" (libsndfile reports 2**63 - 1 for a FLAC file that does not say).
_UNKNOWN_LENGTH = 1 << 62
# A header's frame count sizes the first buffer only up to this many frames per byte of file (a FLAC file of
# silence holds about 400); beyond that the buffer grows as samples are actually decoded.
_TRUSTED_FRAMES_PER_BYTE = 8
# See ``_read_limit``.
_WHOLE_READ_FACTOR = 2
# RIFF chunks walked to find a WAV file's data chunk.
_MAX_RIFF_CHUNKS = 64


class _PatchedFile(io.RawIOBase):
    """A binary file read through libsndfile's virtual I/O, with some header bytes replaced (``{offset: bytes}``)."""

    def __init__(self, raw: BinaryIO, patches: dict[int, bytes], name: str) -> None:
        super().__init__()
        self._raw, self._patches, self._name = raw, patches, name

    def __repr__(self) -> str:
        return repr(self._name)  # soundfile names the file in its errors with repr()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readinto(self, buffer: Any) -> int:
        start = self._raw.tell()
        count = self._raw.readinto(buffer) or 0
        view = memoryview(buffer).cast("B")
        for offset, data in self._patches.items():
            low, high = max(offset, start), min(offset + len(data), start + count)
            if low < high:
                view[low - start : high - start] = data[low - offset : high - offset]
        return count


def _flac_patch(raw: BinaryIO) -> tuple[dict[int, bytes], int | None]:
    """A FLAC file's STREAMINFO with "unknown length" in place of its sample count, and the count it declared.

    libsndfile stops at the declared count even where the stream goes on; with an unknown length it decodes to the
    end, so neither a count that is too low nor one that is absurdly high (2**36) decides how much is read.
    """
    head = raw.read(26)
    if len(head) < 26 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return {}, None
    fields = int.from_bytes(head[18:26], "big")
    declared = fields & ((1 << 36) - 1)
    unknown = (fields - declared).to_bytes(8, "big")
    return {18: unknown}, declared or None


def _wav_patch(raw: BinaryIO, size: int) -> dict[int, bytes]:
    """The data chunk length of a WAV file whose writer left it 0 (streaming), set to the bytes that follow it."""
    head = raw.read(12)
    if head[:4] != b"RIFF" or head[8:] != b"WAVE":
        return {}
    position = 12
    for _ in range(_MAX_RIFF_CHUNKS):
        raw.seek(position)
        header = raw.read(8)
        if len(header) < 8:
            return {}
        length = int.from_bytes(header[4:], "little")
        if header[:4] == b"data":
            remaining = size - position - 8
            if length or remaining <= 0:
                return {}
            return {position + 4: min(remaining, 0xFFFFFFFF).to_bytes(4, "little")}
        position += 8 + length + (length & 1)
    return {}


def _checked_file(path: str | os.PathLike) -> int:
    """The size in bytes of the audio file ``path``; AudioDecodeError naming it when it is not a non-empty file."""
    problem = file_problem(path)
    if problem == "does not exist":
        raise AudioDecodeError(f"{shown(path)}: audio file not found")
    if problem:
        raise AudioDecodeError(f"{shown(path)}: cannot read audio: the path {problem}")
    size = os.stat(path).st_size
    if size == 0:
        raise AudioDecodeError(f"{shown(path)}: audio file is empty (0 bytes)")
    return size


def _read_block(source: soundfile.SoundFile, block: np.ndarray) -> int:
    """Decode up to ``len(block)`` frames into ``block`` -> frames decoded (0 at the end of the stream).

    Calls libsndfile directly: ``SoundFile.read`` seeks after every block, which fails on FLAC files of unknown
    length, and never reads past the header's frame count.
    """
    count = soundfile._snd.sf_readf_float(
        source._file, soundfile._ffi.cast("float *", block.ctypes.data), len(block)
    )
    soundfile._error_check(source._errorcode)
    return int(count)


def _first_capacity(declared: int | None, limit: int | None, size: int, channels: int) -> int:
    """Frames to allocate before decoding: the header's count, believed up to what the file size makes plausible."""
    plausible = max(_READ_BLOCK_FRAMES, _TRUSTED_FRAMES_PER_BYTE * size // channels)
    capacity = plausible if declared is None else min(declared, plausible)
    return capacity if limit is None else min(capacity, limit)


def _read_frames(source: soundfile.SoundFile, capacity: int, limit: int | None) -> Tensor:
    """Decode ``source`` block by block into a (channels, frames) tensor, up to ``limit`` frames or its end.

    The tensor starts at ``capacity`` frames and doubles when the stream holds more, so that no header value sizes
    an allocation beyond what is decoded; the extra memory is one block (65536 frames) when ``capacity`` is right.
    """
    channels = source.channels
    waveform = torch.empty(channels, max(capacity, 1), dtype=torch.float32)
    block = np.empty((min(_READ_BLOCK_FRAMES, limit or _READ_BLOCK_FRAMES), channels), dtype=np.float32)
    filled = 0
    while limit is None or filled < limit:
        wanted = len(block) if limit is None else min(len(block), limit - filled)
        count = _read_block(source, block[:wanted])
        if count == 0:
            break
        if filled + count > waveform.shape[1]:
            grown = torch.empty(channels, max(2 * waveform.shape[1], filled + count), dtype=torch.float32)
            grown[:, :filled] = waveform[:, :filled]
            waveform = grown
        waveform[:, filled : filled + count] = torch.from_numpy(block[:count]).t()
        filled += count
    return waveform[:, :filled].contiguous()


def _decode(path: str | os.PathLike, frames_needed: Callable[[int], int | None]) -> tuple[Tensor, int]:
    """Decode the first ``frames_needed(sample_rate)`` frames of an audio file (None: all of them)."""
    size = _checked_file(path)
    name = shown(path)
    try:
        with open(path, "rb") as raw:
            patches, declared = _flac_patch(raw)
            raw.seek(0)
            patches = patches or _wav_patch(raw, size)
            raw.seek(0)
            with soundfile.SoundFile(_PatchedFile(raw, patches, name)) as source:
                if declared is None and source.frames < _UNKNOWN_LENGTH:
                    declared = source.frames
                if declared == 0:
                    raise AudioDecodeError(f"{name}: audio file holds no samples")
                _check_data_length(source, name)
                limit = _read_limit(frames_needed(source.samplerate), declared)
                capacity = _first_capacity(declared, limit, size, source.channels)
                waveform, sample_rate = _read_frames(source, capacity, limit), source.samplerate
    except AudioDecodeError:
        raise
    except (soundfile.SoundFileError, OSError) as error:
        raise AudioDecodeError(f"{name}: cannot decode audio ({error})") from error
    _check_complete(waveform.shape[1], declared, limit, name)
    return waveform, int(sample_rate)


def _read_limit(needed: int | None, declared: int | None) -> int | None:
    """Frames to decode when ``needed`` are used: a file that declares at most ``_WHOLE_READ_FACTOR`` times that
    many is read whole (up to that factor), so that its truncation or mid-stream damage is still detected."""
    if needed is not None and declared is not None and declared <= _WHOLE_READ_FACTOR * needed:
        return _WHOLE_READ_FACTOR * needed
    return needed


def _check_data_length(source: soundfile.SoundFile, name: str) -> None:
    """AudioDecodeError when libsndfile noted a data length past the end of the file (an interrupted download)."""
    short_chunk = _SHORT_CHUNK.search(source.extra_info)
    if short_chunk and int(short_chunk.group(1)) not in _PLACEHOLDER_LENGTHS:
        raise AudioDecodeError(
            f"{name}: truncated audio file: its header declares {short_chunk.group(1)} bytes of audio but "
            f"only {short_chunk.group(2)} are present"
        )


def _check_complete(filled: int, declared: int | None, limit: int | None, name: str) -> None:
    """AudioDecodeError when fewer frames were decoded than wanted and declared, or none at all."""
    if filled == 0:
        raise AudioDecodeError(f"{name}: audio file holds no samples")
    expected = declared if limit is None or declared is None else min(declared, limit)
    if expected is not None and filled < expected:
        raise AudioDecodeError(
            f"{name}: truncated audio file: its header declares {declared} frames but only {filled} could be decoded"
        )


def load_audio(path: str | os.PathLike, *, max_frames: int | None = None) -> tuple[Tensor, int]:
    """Decode an audio file (any format libsndfile reads: WAV, FLAC, OGG/Vorbis, MP3, ...) -> (channels, samples), Hz.

    Samples are float32 in [-1, 1]. With ``max_frames`` decoding stops after that many frames. The file is decoded
    block by block straight into the output tensor, so the extra memory is one block (65536 frames) whatever the
    file's length; a header's length (which may lie, or say "unknown") never sizes more than a buffer that the file
    size makes plausible, which grows as samples arrive. Raises AudioDecodeError, naming the file, if it is missing,
    not a regular file, empty, not audio, holds no samples, or is truncated (its header promises more audio than it
    contains). A WAV file whose data length was left 0 by a streaming writer is read to its end.
    """
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise InvalidInputError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    return _decode(path, lambda sample_rate: max_frames)


_PCM_SCALES = {
    torch.int8: (0.0, 128.0),
    torch.uint8: (128.0, 128.0),
    torch.int16: (0.0, 32768.0),
    torch.int32: (0.0, 2147483648.0),
}


def _as_tensor(x: object, source: str) -> Tensor:
    """A numpy array or tensor as a tensor (numpy byte order and read-only flags normalised)."""
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        if x.dtype.kind not in "iuf":
            raise InvalidInputError(f"{source}: expected a numeric audio array, got dtype {x.dtype}")
        if not x.flags.writeable or min(x.strides, default=0) < 0:
            x = x.copy()  # torch.from_numpy needs a writeable array with positive strides
        return torch.from_numpy(x)
    raise InvalidInputError(f"{source}: expected a numpy array or torch.Tensor, got {type(x).__name__}")


def _to_float(x: Tensor, source: str) -> Tensor:
    """PCM integers scaled to [-1, 1) (8-bit unsigned is offset by 128); floats cast to float32 as they are.

    The float32 results are exact for 8- and 16-bit PCM and correctly rounded for 32-bit PCM (scales are powers of 2).
    """
    if x.dtype in _PCM_SCALES:
        offset, scale = _PCM_SCALES[x.dtype]
        return (x.to(torch.float32) - offset).div_(scale)
    if x.is_floating_point():
        x = x.to(torch.float32)
        if not all_finite(x):
            raise InvalidInputError(f"{source}: waveform contains NaN or infinite samples")
        return x
    raise InvalidInputError(
        f"{source}: unsupported sample dtype {x.dtype}; expected float, int8, uint8, int16 or int32 PCM"
    )


def _channels_first(x: Tensor, source: str) -> Tensor:
    """(N,) -> (1, N); (C, N) stays; (N, C) is transposed. C is the dimension of size <= 8 that is the smaller one."""
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() == 2:
        rows, cols = x.shape
        if rows <= MAX_CHANNELS and rows < cols:
            return x
        if cols <= MAX_CHANNELS and cols < rows:
            return x.t()
    raise InvalidInputError(
        f"{source}: expected a waveform of shape (N,), (C, N) or (N, C) with at most {MAX_CHANNELS} channels "
        f"fewer than samples, got shape {tuple(x.shape)}"
    )


def prepare_waveform(
    x: np.ndarray | Tensor,
    sample_rate: int | None,
    target_sample_rate: int = 16000,
    source: str = "waveform",
) -> Tensor:
    """Turn raw audio into the mono float32 (N,) waveform at ``target_sample_rate`` that the filterbank expects.

    Shapes: (N,), (C, N) or (N, C). The channel dimension is the one of size at most 8 that is smaller than the
    other; a shape where neither or both qualify (e.g. (8, 8) or (2, 2)) is rejected as ambiguous. Channels are
    averaged. Integer PCM is scaled to [-1, 1]: int16 / 32768, int32 / 2**31, int8 / 128, uint8 (x - 128) / 128;
    float input (float16/32/64) is assumed to be in [-1, 1] already and is only cast. ``source`` names the input in
    error messages (e.g. the file it came from). Input that needs no conversion (mono float32 at the target rate)
    is returned as a view of ``x``, not a copy, so an hour-long clip is not held twice.
    """
    if sample_rate is None:
        raise InvalidInputError(
            f"{source}: sample_rate is required for a raw array or tensor (the rate it was recorded at, in Hz)"
        )
    try:
        sample_rate = _check_rate("sample_rate", sample_rate)
    except InvalidInputError as error:
        raise InvalidInputError(f"{source}: {error}") from None
    tensor = _channels_first(_as_tensor(x, source), source)
    if tensor.shape[-1] == 0:
        raise InvalidInputError(f"{source}: waveform has no samples")
    channels = _to_float(tensor, source)
    mono = channels[0] if channels.shape[0] == 1 else channels.mean(dim=0)
    try:
        return resample(mono, sample_rate, target_sample_rate).contiguous()
    except InvalidInputError as error:
        raise InvalidInputError(f"{source}: {error}") from None


# ----------------------------------------------------------------------------------------------------------------
# Model inputs
# ----------------------------------------------------------------------------------------------------------------


def _fit_length(fbank: Tensor, target_length: int) -> Tensor:
    """Zero-pad at the end, or cut, the frame axis (-2) to ``target_length`` frames."""
    missing = target_length - fbank.shape[-2]
    if missing > 0:
        return F.pad(fbank, (0, 0, 0, missing))
    return fbank[..., :target_length, :]


def waveform_to_fbank(
    waveform: np.ndarray | Tensor,
    sample_rate: int | None,
    config: EquiAVConfig,
    *,
    windows: str = "crop",
    source: str = "waveform",
) -> Tensor:
    """The authors' audio input: normalised log-mel frames of one clip.

    ``waveform`` is anything ``prepare_waveform`` accepts; it is made mono at ``config.sample_rate``, its mean is
    subtracted, and ``kaldi_fbank`` turns it into (frames, ``config.num_mel_bins``). With ``windows="crop"`` the
    frames are zero-padded at the end or cut to ``config.target_length`` -> (target_length, num_mel_bins). With
    ``windows="sliding"`` the clip is split into W = ceil(frames / target_length) consecutive windows (hop =
    target_length, the last one zero-padded) -> (W, target_length, num_mel_bins), for callers that average window
    embeddings over a long clip. The mean is always that of the whole clip, as in the authors' code, but "crop" runs
    the filterbank over the samples of the kept frames only, so an hour-long clip costs no more than its waveform.
    Every frame's DC offset is removed again inside the filterbank, so the clip mean changes the output only by float
    rounding (up to a few 1e-4 of the normalised values): a decoder may stop after ``crop_samples(config)`` samples.

    Silent audio (all zeros, or any constant) is valid input: after mean removal every frame has zero power, so
    every filterbank value sits on the log floor ``log(float32 eps)`` (about -15.9) and the model input is a finite
    constant, never NaN.

    Finally, with ``config.audio_normalization == "dataset"`` (the authors' input),
    ``(fbank - config.audio_mean) / config.audio_std``. As in the authors' code (bug B21, kept for checkpoint
    compatibility) the zero padding happens *before* this normalisation, so padded frames become
    ``-audio_mean / audio_std`` (about +1.0 with the AudioSet statistics), not 0. With ``"utterance"`` the clip's
    frames (those that "crop" keeps, every frame with "sliding") are shifted and scaled to mean 0 and standard deviation 0.5
    (the spread of the dataset statistics' output) and padded frames are 0: a gain or a quieter microphone adds a
    constant to every log-mel value above the log floor, which this removes.
    """
    _check_windows(windows)
    kept = crop_samples(config)
    mono = prepare_waveform(waveform, sample_rate, config.sample_rate, source=source)
    mean = mono.mean()
    try:
        if windows == "crop":
            mono = mono[:kept]
        fbank = kaldi_fbank(
            mono - mean,
            config.sample_rate,
            num_mel_bins=config.num_mel_bins,
            frame_length_ms=config.frame_length_ms,
            frame_shift_ms=config.frame_shift_ms,
        )
    except InvalidInputError as error:
        raise InvalidInputError(f"{source}: {error}") from error
    _check_overflow(fbank, mono, source)
    utterance = config.audio_normalization == "utterance"
    if utterance:
        fbank = _normalize_utterance(fbank)
    length = config.target_length
    if windows == "sliding":
        count = -(-fbank.shape[0] // length)
        fbank = _fit_length(fbank, count * length).reshape(count, length, config.num_mel_bins)
    else:
        fbank = _fit_length(fbank, length)
    return fbank if utterance else _normalize_dataset(fbank, config)


def _check_windows(windows: object) -> None:
    if windows not in ("crop", "sliding"):
        raise InvalidInputError(f"windows must be 'crop' or 'sliding', got {windows!r}")


def _check_overflow(fbank: Tensor, mono: Tensor, source: str) -> None:
    """InvalidInputError when finite samples are so large that their frame powers overflow float32 (about 1e16)."""
    if not all_finite(fbank):
        peak = float(mono.abs().max())
        raise InvalidInputError(
            f"{source}: samples too large: the peak magnitude {peak:.3g} overflows the float32 filterbank; "
            "float samples are expected in [-1, 1]"
        )


def _normalize_dataset(fbank: Tensor, config: EquiAVConfig) -> Tensor:
    """``(fbank - audio_mean) / audio_std``; ConfigError when those constants make it overflow float32."""
    normalized = (fbank - config.audio_mean) / config.audio_std
    if not all_finite(normalized):
        raise ConfigError(
            f"config field 'audio_std' = {config.audio_std!r} (with audio_mean = {config.audio_mean!r}) makes the "
            "normalized filterbank overflow float32; use the statistics of the training data (about 4.3)"
        )
    return normalized


def _normalize_utterance(fbank: Tensor) -> Tensor:
    """Shift and scale one clip's (frames, bins) log-mel values to mean 0 and standard deviation 0.5.

    The mean is summed in float64 so that a constant input (silence on the log floor) becomes exactly 0.
    """
    centred = fbank - fbank.mean(dtype=torch.float64).to(fbank.dtype)
    return centred / (2.0 * centred.std(correction=0) + 1e-5)


def crop_samples(config: EquiAVConfig) -> int:
    """Samples that hold the first ``config.target_length`` frames (Kaldi framing with ``snip_edges``): all that
    ``waveform_to_fbank(..., windows="crop")`` reads of a clip besides its mean, which the filterbank's per-frame DC
    removal cancels, so a decoder may stop after this many samples."""
    try:
        window_size, hop = _frame_geometry(config.sample_rate, config.frame_length_ms, config.frame_shift_ms)
    except InvalidInputError as error:
        raise ConfigError(f"config fields 'frame_length_ms' and 'frame_shift_ms': {error}") from None
    return window_size + (config.target_length - 1) * hop


def _crop_frames(path: str | os.PathLike, config: EquiAVConfig) -> Callable[[int], int]:
    """Frames of a file at a given rate that the resampler needs for the ``crop_samples`` samples "crop" keeps."""
    kept = crop_samples(config)

    def frames(sample_rate: int) -> int:
        try:
            return resample_input_length(kept, sample_rate, config.sample_rate)
        except InvalidInputError as error:
            raise InvalidInputError(f"{shown(path)}: {error}") from None

    return frames


def load_fbank(path: str | os.PathLike, config: EquiAVConfig, *, windows: str = "crop") -> Tensor:
    """``waveform_to_fbank`` of an audio file (decoded like ``load_audio``, channels averaged, resampled).

    The file's layout is known to be (channels, samples), so its channels are averaged here, whatever their count,
    and a file of a few samples gets the "too short for one frame" error rather than an ambiguous-shape one. With
    ``windows="crop"`` decoding stops after the samples the kept frames need (``resample_input_length`` of
    ``crop_samples``), so a ten-hour file costs what its first seconds cost; the mean removed is then that of the
    decoded part, which changes the output only by float rounding (see ``waveform_to_fbank``).
    """
    _check_windows(windows)
    frames_needed = _crop_frames(path, config) if windows == "crop" else lambda sample_rate: None
    waveform, sample_rate = _decode(path, frames_needed)
    mono = waveform[0] if waveform.shape[0] == 1 else waveform.mean(dim=0)
    return waveform_to_fbank(mono, sample_rate, config, windows=windows, source=shown(path))


def _describe(value: object) -> str:
    """What a bad argument was, for error messages."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


# ----------------------------------------------------------------------------------------------------------------
# Raw inputs of ``embed_audio``
# ----------------------------------------------------------------------------------------------------------------


def audio_input_to_fbanks(
    item: object, sample_rate: int | None, config: EquiAVConfig, windows: str
) -> Tensor:
    """One audio file path, numpy array or tensor -> normalized filterbank windows (W, T, F); W = 1 with "crop"."""
    if isinstance(item, (str, Path)):
        fbank = load_fbank(item, config, windows=windows)
    elif isinstance(item, (np.ndarray, Tensor)):
        fbank = waveform_to_fbank(item, sample_rate, config, windows=windows)
    else:
        raise InvalidInputError(
            f"audio input must be a file path, a numpy array or a torch.Tensor waveform, got {type(item).__name__}"
        )
    return fbank if windows == "sliding" else fbank.unsqueeze(0)


def audio_inputs_to_fbanks(
    items: list[object], sample_rate: int | None, config: EquiAVConfig, windows: str = "crop"
) -> list[Tensor]:
    """``audio_input_to_fbanks`` of every item."""
    return [audio_input_to_fbanks(item, sample_rate, config, windows) for item in items]
