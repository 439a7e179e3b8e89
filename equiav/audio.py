"""Audio front-end: decoding, resampling and the Kaldi log-mel filterbank that EquiAV's audio tower reads.

Everything here is plain torch (no torchaudio), batched over leading dimensions, and reproduces the authors' input
pipeline (reference section 7.2): mono 16 kHz waveform -> minus its mean -> Kaldi fbank (HTK mel, symmetric Hann
window, 25 ms / 10 ms frames, power spectrum, log with a float32-eps floor) -> zero-pad or cut to ``target_length``
frames -> ``(fbank - audio_mean) / audio_std``.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import all_finite
from .config import EquiAVConfig
from .errors import AudioDecodeError, InvalidInputError

__all__ = [
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


@lru_cache(maxsize=16)
def _resample_kernels(up: int, down: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, int]:
    """One windowed-sinc filter per output phase, as (up, 1, taps) conv1d weights, and the left padding they need.

    Output sample ``j = up * q + p`` sits at input position ``q * down + p * down / up``. Its filter is a low-pass
    sinc with cutoff ``rolloff * min(1, up / down)`` (in units of the input Nyquist frequency), tapered by a Kaiser
    window that spans ``_SINC_ZERO_CROSSINGS`` zero crossings on each side.
    """
    cutoff = _SINC_ROLLOFF * min(1.0, up / down)
    half_width = math.ceil(_SINC_ZERO_CROSSINGS / cutoff)
    taps = torch.arange(-half_width, down + half_width, dtype=torch.float64)
    phase = torch.arange(up, dtype=torch.float64).unsqueeze(1) * down / up
    offset = phase - taps
    window_arg = (1.0 - (offset / half_width).square()).clamp_min(0.0).sqrt()
    window = torch.special.i0(_KAISER_BETA * window_arg) / torch.special.i0(torch.tensor(_KAISER_BETA))
    window = torch.where(offset.abs() <= half_width, window, torch.zeros_like(window))
    kernels = cutoff * torch.sinc(cutoff * offset) * window
    return kernels.unsqueeze(1).to(device=device, dtype=dtype), half_width


def resample(waveform: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Band-limited resampling of ``waveform`` (..., N) from ``orig_sr`` to ``new_sr`` Hz -> (..., ceil(N * new / orig)).

    A polyphase windowed-sinc filter (Kaiser window, rates reduced by their gcd) evaluated as one strided conv1d.
    Content below 85 % of the lower Nyquist frequency passes with under 1e-5 gain error, content above it is
    attenuated by more than 80 dB, and the band in between is the filter's transition. The signal is taken as zero
    outside its ends (like ``scipy.signal.resample_poly``), so the first and last few milliseconds taper. On CUDA,
    cuDNN may run the filter in TF32 (about 1e-3 relative error) unless ``torch.backends.cudnn.allow_tf32`` is off.
    """
    for name, rate in (("orig_sr", orig_sr), ("new_sr", new_sr)):
        if not isinstance(rate, int | np.integer) or isinstance(rate, bool) or rate <= 0:
            raise InvalidInputError(f"{name} must be a positive integer sample rate, got {rate!r}")
    if not isinstance(waveform, Tensor) or not waveform.is_floating_point() or waveform.dim() == 0:
        raise InvalidInputError(
            f"waveform must be a floating-point torch.Tensor (..., N), got {_describe(waveform)}"
        )
    if orig_sr == new_sr:
        return waveform
    divisor = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // divisor, int(orig_sr) // divisor
    kernels, half_width = _resample_kernels(up, down, waveform.device, waveform.dtype)
    length = waveform.shape[-1]
    out_length = -(-length * up // down)
    steps = -(-out_length // up)
    right_pad = max(0, (steps - 1) * down + kernels.shape[-1] - half_width - length)
    flat = waveform.reshape(-1, 1, length)
    padded = F.pad(flat, (half_width, right_pad))
    phases = F.conv1d(padded, kernels, stride=down)[..., :steps]
    out = phases.transpose(1, 2).reshape(flat.shape[0], steps * up)[:, :out_length]
    return out.reshape(*waveform.shape[:-1], out_length)


# ----------------------------------------------------------------------------------------------------------------
# Decoding and waveform preparation
# ----------------------------------------------------------------------------------------------------------------

# libsndfile notes a RIFF/AIFF chunk whose declared length runs past the end of the file as "data : N (should be M)".
_SHORT_CHUNK = re.compile(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers leave these placeholders in the length field; such files are complete, not truncated.
_PLACEHOLDER_LENGTHS = {0, 0xFFFFFFFF, 0x7FFFFFFF}


def load_audio(path: str | Path) -> tuple[Tensor, int]:
    """Decode an audio file (any format libsndfile reads: WAV, FLAC, OGG/Vorbis, MP3, ...) -> (channels, samples), Hz.

    Samples are float32 in [-1, 1]. The file is decoded block by block straight into the output tensor, so the extra
    memory is one block (65536 frames) whatever the file's length. Raises AudioDecodeError, naming the file, if it is
    missing, empty, not audio, holds no samples, or is truncated (its header promises more audio than it contains).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: audio file is empty (0 bytes)")
    try:
        with soundfile.SoundFile(str(path)) as source:
            declared, channels, sample_rate = source.frames, source.channels, source.samplerate
            if declared <= 0:
                raise AudioDecodeError(f"{path}: audio file holds no samples")
            short_chunk = _SHORT_CHUNK.search(source.extra_info)
            if short_chunk and int(short_chunk.group(1)) not in _PLACEHOLDER_LENGTHS:
                raise AudioDecodeError(
                    f"{path}: truncated audio file: its header declares {short_chunk.group(1)} bytes of audio but "
                    f"only {short_chunk.group(2)} are present"
                )
            waveform = torch.empty(channels, declared, dtype=torch.float32)
            block = np.empty((min(declared, _READ_BLOCK_FRAMES), channels), dtype=np.float32)
            filled = 0
            while filled < declared:
                count = source.read(min(len(block), declared - filled), dtype="float32", out=block).shape[0]
                if count == 0:
                    break
                waveform[:, filled : filled + count] = torch.from_numpy(block[:count]).t()
                filled += count
    except soundfile.SoundFileError as error:
        raise AudioDecodeError(f"{path}: cannot decode audio ({error})") from error
    if filled < declared:
        raise AudioDecodeError(
            f"{path}: truncated audio file: its header declares {declared} frames but only {filled} could be decoded"
        )
    return waveform, int(sample_rate)


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
    if not isinstance(sample_rate, int | np.integer) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise InvalidInputError(
            f"{source}: sample_rate must be a positive integer number of Hz, got {sample_rate!r}"
        )
    tensor = _channels_first(_as_tensor(x, source), source)
    if tensor.shape[-1] == 0:
        raise InvalidInputError(f"{source}: waveform has no samples")
    channels = _to_float(tensor, source)
    mono = channels[0] if channels.shape[0] == 1 else channels.mean(dim=0)
    return resample(mono, sample_rate, target_sample_rate).contiguous()


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
    if windows not in ("crop", "sliding"):
        raise InvalidInputError(f"windows must be 'crop' or 'sliding', got {windows!r}")
    mono = prepare_waveform(waveform, sample_rate, config.sample_rate, source=source)
    mean = mono.mean()
    try:
        if windows == "crop":
            mono = mono[: crop_samples(config)]
        fbank = kaldi_fbank(
            mono - mean,
            config.sample_rate,
            num_mel_bins=config.num_mel_bins,
            frame_length_ms=config.frame_length_ms,
            frame_shift_ms=config.frame_shift_ms,
        )
    except InvalidInputError as error:
        raise InvalidInputError(f"{source}: {error}") from error
    utterance = config.audio_normalization == "utterance"
    if utterance:
        fbank = _normalize_utterance(fbank)
    length = config.target_length
    if windows == "sliding":
        count = -(-fbank.shape[0] // length)
        fbank = _fit_length(fbank, count * length).reshape(count, length, config.num_mel_bins)
    else:
        fbank = _fit_length(fbank, length)
    return fbank if utterance else (fbank - config.audio_mean) / config.audio_std


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
    window_size, hop = _frame_geometry(config.sample_rate, config.frame_length_ms, config.frame_shift_ms)
    return window_size + (config.target_length - 1) * hop


def load_fbank(path: str | Path, config: EquiAVConfig, *, windows: str = "crop") -> Tensor:
    """``waveform_to_fbank`` of an audio file (decoded with ``load_audio``, channels averaged, resampled).

    The file's layout is known to be (channels, samples), so its channels are averaged here, whatever their count,
    and a file of a few samples gets the "too short for one frame" error rather than an ambiguous-shape one.
    """
    waveform, sample_rate = load_audio(path)
    mono = waveform[0] if waveform.shape[0] == 1 else waveform.mean(dim=0)
    return waveform_to_fbank(mono, sample_rate, config, windows=windows, source=str(path))


def _describe(value: object) -> str:
    """What a bad argument was, for error messages."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
