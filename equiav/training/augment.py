"""Parameterized augmentations: every augmented view comes with the vector that describes it.

EquiAV's transformation predictor reads a vector of augmentation parameters next to the tokens of the original input,
so each augmentation must be reproducible from its parameters, and the centroid views need parameter vectors drawn
from the same distribution without touching any data. This module provides both, in the authors' vector layout
(reference section 2), so that our predictor and the predictors of the released checkpoints see the inputs they were
trained on.

API (``AudioAugmenter`` and ``VisualAugmenter`` share it):

* ``sample(generator)`` -> parameters (a frozen dataclass, ``AudioAugParams`` / ``VisualAugParams``);
  ``sample_batch(n, generator)`` -> a list of them. All randomness comes from the given ``torch.Generator`` (the
  global torch generator when ``None``), so a data worker or a resumed run replays the same draws.
* ``apply(x, params)`` -> the augmented tensor, deterministic. ``x`` is one item with ``params`` one parameter object,
  or a batch with a leading dimension and ``params`` a sequence with one parameter object per item. CPU or GPU; the
  output is on the input's device and dtype.
* ``vector(params)`` -> the float32 vector (24-d audio, 18-d visual), or an (n, d) tensor for a sequence;
  ``decode(vector)`` is its inverse, so ``apply(x, decode(vector(p)))`` equals ``apply(x, p)``.
* ``sample_vectors(n, generator)`` -> float32 (n, d): vectors only, vectorized over n, from the same joint
  distribution as ``sample`` (what the centroid views use; reference 2.4, without the authors' dummy images).
* ``augmenter(x, generator)`` -> (augmented tensor, vector): sample, apply and encode in one call.
* ``AudioAugmenter.for_config(cfg)`` / ``VisualAugmenter.for_config(cfg)``: the augmenter for an ``EquiAVConfig``
  (its ``target_length``, ``num_mel_bins`` and ``image_size``).
* ``identity_params()`` / ``identity_vector()``: the in-distribution "no augmentation" (crop flag on with the whole
  input, everything else off; reference 2.6); applying it returns the input unchanged.

Audio input is the normalized filterbank, (T, F) or (B, T, F), T = ``target_length`` frames, F = ``num_mel_bins``;
the output has the same shape. Visual input is a float RGB image in [0, 1], (3, H, W) or (B, 3, H, W), any size; the
output is (3, S, S) or (B, 3, S, S) with S = ``image_size``, still in [0, 1] (ImageNet normalization comes later).
Visual crops are stored as fractions of the input; ``VisualAugmenter.sample(generator, input_size)`` draws them on
the pixel grid of the actual frame, as the authors' dataset did, while ``sample_vectors`` assumes an S x S input, as
their model's sampler did. Which frame is augmented (bug B5) is the data pipeline's choice, not this module's.

Audio vector (24): 0 SpecAugment flag; 1-2 time-mask start, end (raw frame indices); 3-4 frequency-mask start, end
(raw bin indices); 5 time-shift flag (same coin as 0); 6 shift n / T, n uniform in [-T, T); 7 crop flag (always 1);
8-11 crop (top frame i / F, first bin j / T, frames h / F, bins w / T: the authors divide by the other axis' length);
12 colour-jitter flag; 13-16 jitter order (ids 0 brightness, 1 contrast, 2 saturation, 3 hue; [0, 1, 2, 3] when
off); 17-19 brightness, contrast, saturation factor - 1; 20 hue; 21 blur flag; 22 blur sigma; 23 flip flag.
Visual vector (18): 0 crop flag (always 1); 1-4 crop top / H, left / W, height / H, width / W; 5 jitter flag;
6-9 jitter order; 10-12 factor - 1; 13 hue; 14 blur flag; 15 sigma; 16 horizontal-flip flag; 17 grayscale flag.
Entries of an augmentation that is off are 0.

Default behaviour versus ``faithful=True`` (the authors' code, for ablations and fine-tuning their checkpoints):

* Time shift (bug B1): by default the spectrogram is rolled circularly along time by the recorded n frames. The
  authors rolled the channel axis of their 3 identical channels, a no-op; ``faithful=True`` keeps it a no-op. The
  vector records the shift either way.
* Audio colour jitter (bug B2): by default brightness multiplies the normalized spectrogram and contrast blends it
  with its mean, without clamping (the paper's brightness and contrast for audio; the two commute). A single-channel
  spectrogram has no saturation or hue, so those two factors are sampled and recorded, keeping the vector
  distribution, but change nothing. ``faithful=True`` runs torchvision's colour ops on the 3-channel copy, clamping
  to [0, 1] as the authors' pipeline did. Their hue step leaves one channel unclamped (red for shifts of up to
  1/6 turn) and clamps the other two, so a later brightness, contrast or saturation step can make the channels
  differ; faithful audio output is therefore the authors' 3-channel tensor, (3, T, F) or (B, 3, T, F).
* Audio flip (B4): the authors' "horizontal flip" reverses the mel bins, not time; both modes do the same.
* Blur: a Gaussian of standard deviation sigma with a 2 * ceil(sigma) + 1 tap kernel and reflect padding, as
  torchvision's ``gaussian_blur`` (exactly the authors' audio blur). The authors blurred frames with Pillow's
  ``GaussianBlur(radius=sigma)``, three extended box passes with edge replication, which is a wider blur for the
  same sigma; visual ``faithful=True`` emulates that filter in float.
* Visual contrast: ``faithful=True`` rounds the grey mean to 1/255 as Pillow does. Remaining differences from the
  authors' Pillow pipeline, in both modes: no uint8 rounding between steps, continuous hue rotation (Pillow shifts an
  8-bit hue channel), torchvision's grey weights (0.2989, 0.587, 0.114) for contrast, saturation and grayscale, and
  PyTorch's bilinear resize for the crop (antialiased when shrinking) instead of Pillow's.

Random resized crop follows torchvision's ``RandomResizedCrop.get_params``: up to ten tries of area and log-uniform
aspect ratio, then the whole input (or the nearest allowed ratio) as fallback; the crop is resized back with bilinear
interpolation. The audio crop's height is along time and its width along frequency, with ratio width / height in
(1/10, 1.5/8) at 1024 x 128; ``AudioAugmentConfig.for_input`` scales the ratio and the mask maxima to other input
sizes so the crops and masks cover the same fractions of the input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import EquiAVConfig
from ..errors import ConfigError, InvalidInputError

AUDIO_VECTOR_DIM = 24
VISUAL_VECTOR_DIM = 18
IDENTITY_ORDER = (0, 1, 2, 3)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)

# Reference geometry of the authors' audio input; other sizes scale the mask maxima and the crop ratio from it.
_REF_FRAMES, _REF_BINS = 1024, 128


# --------------------------------------------------------------------------------------------------------------------
# Configuration


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"augmentation config field '{name}' must be a probability in [0, 1], got {value!r}"
        )


def _check_range(name: str, pair: tuple[float, float], low: float = 0.0) -> None:
    if len(pair) != 2 or not low <= pair[0] <= pair[1]:
        raise ConfigError(
            f"augmentation config field '{name}' must be (min, max) with {low} <= min <= max, got {pair!r}"
        )


def _check_jitter(brightness: float, contrast: float, saturation: float, hue: float) -> None:
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if value < 0:
            raise ConfigError(f"augmentation config field '{name}' must be >= 0, got {value!r}")
    if not 0.0 <= hue <= 0.5:
        raise ConfigError(f"augmentation config field 'hue' must be in [0, 0.5], got {hue!r}")


@dataclass(frozen=True)
class AudioAugmentConfig:
    """Input geometry, probabilities and ranges of the audio augmentation (defaults: the authors' pretraining)."""

    target_length: int = _REF_FRAMES
    num_mel_bins: int = _REF_BINS
    p_specaug: float = 0.8
    time_mask: int = 192
    freq_mask: int = 48
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (1 / 10, 1.5 / 8)
    p_jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p_blur: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)
    p_flip: float = 0.5
    faithful: bool = False

    def __post_init__(self) -> None:
        for name in ("target_length", "num_mel_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise ConfigError(
                    f"augmentation config field '{name}' must be an integer >= 2, got {value!r}"
                )
        for name, value, size in (("time_mask", self.time_mask, self.target_length),
                                  ("freq_mask", self.freq_mask, self.num_mel_bins)):  # fmt: skip
            if not 0 <= value <= size:
                raise ConfigError(f"augmentation config field '{name}' must be in [0, {size}], got {value!r}")
        for name in ("p_specaug", "p_jitter", "p_blur", "p_flip"):
            _check_probability(name, getattr(self, name))
        _check_range("crop_scale", self.crop_scale, low=1e-9)
        _check_range("crop_ratio", self.crop_ratio, low=1e-9)
        _check_range("sigma", self.sigma, low=1e-9)
        _check_jitter(self.brightness, self.contrast, self.saturation, self.hue)

    @classmethod
    def for_input(cls, target_length: int, num_mel_bins: int, **overrides: Any) -> AudioAugmentConfig:
        """The authors' settings rescaled from 1024 x 128 to ``target_length`` x ``num_mel_bins``.

        Mask maxima scale with their axis, and the crop's width / height ratio with the input's aspect, so masks and
        crops cover the same fractions of the input as the authors' at 1024 x 128.
        """
        aspect = (num_mel_bins / target_length) / (_REF_BINS / _REF_FRAMES)
        values: dict[str, Any] = dict(
            target_length=target_length,
            num_mel_bins=num_mel_bins,
            time_mask=round(cls.time_mask * target_length / _REF_FRAMES),
            freq_mask=round(cls.freq_mask * num_mel_bins / _REF_BINS),
            crop_ratio=(cls.crop_ratio[0] * aspect, cls.crop_ratio[1] * aspect),
        )
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class VisualAugmentConfig:
    """Output size, probabilities and ranges of the visual augmentation (defaults: the authors' pretraining)."""

    image_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p_blur: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)
    p_flip: float = 0.5
    p_gray: float = 0.2
    faithful: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 2:
            raise ConfigError(
                f"augmentation config field 'image_size' must be an integer >= 2, got {self.image_size!r}"
            )
        for name in ("p_jitter", "p_blur", "p_flip", "p_gray"):
            _check_probability(name, getattr(self, name))
        _check_range("crop_scale", self.crop_scale, low=1e-9)
        _check_range("crop_ratio", self.crop_ratio, low=1e-9)
        _check_range("sigma", self.sigma, low=1e-9)
        _check_jitter(self.brightness, self.contrast, self.saturation, self.hue)


# --------------------------------------------------------------------------------------------------------------------
# Parameters and their vectors


@dataclass(frozen=True)
class AudioAugParams:
    """One audio augmentation, field by field as the 24-d vector (see the module docstring).

    The defaults switch everything off, including the crop (the authors' out-of-distribution "no augmentation").
    ``crop_box`` is (first frame, first bin, frames, bins); masks are [start, end) frame / bin ranges filled with 0
    (the dataset mean in normalized units); ``shift`` rolls time by that many frames (unless faithful). Colour-jitter
    factors are multiplicative (1 = unchanged); ``jitter_order`` lists the op ids (0 brightness, 1 contrast,
    2 saturation, 3 hue) in application order.
    """

    spec_augment: bool = False
    time_mask: tuple[int, int] = (0, 0)
    freq_mask: tuple[int, int] = (0, 0)
    time_shift: bool = False
    shift: int = 0
    crop: bool = False
    crop_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    color_jitter: bool = False
    jitter_order: tuple[int, int, int, int] = IDENTITY_ORDER
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    blur: bool = False
    sigma: float = 0.0
    flip: bool = False

    def to_vector(self, target_length: int = _REF_FRAMES, num_mel_bins: int = _REF_BINS) -> torch.Tensor:
        """The authors' 24-d float32 vector for an input of ``target_length`` frames x ``num_mel_bins`` bins."""
        frames, bins = float(target_length), float(num_mel_bins)
        spec = self.spec_augment
        values = [
            float(spec),
            *(map(float, self.time_mask) if spec else (0.0, 0.0)),
            *(map(float, self.freq_mask) if spec else (0.0, 0.0)),
            float(self.time_shift),
            self.shift / frames if self.time_shift else 0.0,
            float(self.crop),
        ]
        if self.crop:
            top, left, height, width = self.crop_box
            values += [top / bins, left / frames, height / bins, width / frames]
        else:
            values += [0.0] * 4
        values += _jitter_values(self)
        values += [float(self.blur), self.sigma if self.blur else 0.0, float(self.flip)]
        return torch.tensor(values, dtype=torch.float32)

    @classmethod
    def from_vector(
        cls,
        vector: torch.Tensor | Sequence[float],
        target_length: int = _REF_FRAMES,
        num_mel_bins: int = _REF_BINS,
    ) -> AudioAugParams:
        """Decode a 24-d vector (inverse of ``to_vector``); raises ``InvalidInputError`` on an impossible vector."""
        v = _vector_values(vector, AUDIO_VECTOR_DIM, "audio augmentation vector")
        frames, bins = target_length, num_mel_bins
        spec = _flag(v, 0)
        time_mask = (_index(v, 1), _index(v, 2)) if spec else (0, 0)
        freq_mask = (_index(v, 3), _index(v, 4)) if spec else (0, 0)
        for name, (start, end), size in (("time", time_mask, frames), ("frequency", freq_mask, bins)):
            if not 0 <= start <= end <= size:
                raise InvalidInputError(
                    f"audio augmentation vector: {name} mask [{start}, {end}) is not inside [0, {size}]"
                )
        time_shift = _flag(v, 5)
        shift = _index(v, 6, frames) if time_shift else 0
        if not -frames <= shift < frames:
            raise InvalidInputError(
                f"audio augmentation vector: entry 6 (shift / {frames}) must be in [-1, 1)"
            )
        crop = _flag(v, 7)
        box = (
            (_index(v, 8, bins), _index(v, 9, frames), _index(v, 10, bins), _index(v, 11, frames))
            if crop
            else None
        )
        if box is not None:
            _check_box(box, frames, bins, "audio augmentation vector")
        jitter = _decode_jitter(v, 12, "audio augmentation vector")
        blur, sigma = _decode_blur(v, 21, "audio augmentation vector")
        return cls(
            spec_augment=spec, time_mask=time_mask, freq_mask=freq_mask, time_shift=time_shift, shift=shift,
            crop=crop, crop_box=box or (0, 0, 0, 0), **jitter, blur=blur, sigma=sigma, flip=_flag(v, 23),
        )  # fmt: skip


@dataclass(frozen=True)
class VisualAugParams:
    """One visual augmentation, field by field as the 18-d vector (see the module docstring).

    ``crop_box`` is (top, left, height, width) as fractions of the input's height and width, so the same parameters
    apply to any input size; without ``crop`` the whole input is resized to the output size.
    """

    crop: bool = False
    crop_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    color_jitter: bool = False
    jitter_order: tuple[int, int, int, int] = IDENTITY_ORDER
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    blur: bool = False
    sigma: float = 0.0
    flip: bool = False
    grayscale: bool = False

    def to_vector(self) -> torch.Tensor:
        """The authors' 18-d float32 vector."""
        values = [float(self.crop), *(map(float, self.crop_box) if self.crop else (0.0,) * 4)]
        values += _jitter_values(self)
        values += [
            float(self.blur),
            self.sigma if self.blur else 0.0,
            float(self.flip),
            float(self.grayscale),
        ]
        return torch.tensor(values, dtype=torch.float32)

    @classmethod
    def from_vector(cls, vector: torch.Tensor | Sequence[float]) -> VisualAugParams:
        """Decode an 18-d vector (inverse of ``to_vector``); raises ``InvalidInputError`` on an impossible vector."""
        v = _vector_values(vector, VISUAL_VECTOR_DIM, "visual augmentation vector")
        crop = _flag(v, 0)
        box = (v[1], v[2], v[3], v[4]) if crop else (0.0, 0.0, 0.0, 0.0)
        top, left, height, width = box
        if crop and not (0 <= top and 0 <= left and 0 < height and 0 < width
                         and top + height <= 1 + 1e-6 and left + width <= 1 + 1e-6):  # fmt: skip
            raise InvalidInputError(
                f"visual augmentation vector: crop {box} is not a box inside the unit square"
            )
        jitter = _decode_jitter(v, 5, "visual augmentation vector")
        blur, sigma = _decode_blur(v, 14, "visual augmentation vector")
        return cls(
            crop=crop,
            crop_box=box,
            **jitter,
            blur=blur,
            sigma=sigma,
            flip=_flag(v, 16),
            grayscale=_flag(v, 17),
        )


def _jitter_values(params: AudioAugParams | VisualAugParams) -> list[float]:
    """The nine colour-jitter entries: flag, order slots, factor - 1 for b / c / s, raw hue."""
    if not params.color_jitter:
        return [0.0, *map(float, IDENTITY_ORDER), 0.0, 0.0, 0.0, 0.0]
    p = params
    return [1.0, *map(float, p.jitter_order), p.brightness - 1.0, p.contrast - 1.0, p.saturation - 1.0, p.hue]


def _vector_values(vector: torch.Tensor | Sequence[float], dim: int, what: str) -> list[float]:
    values = vector.detach().cpu().tolist() if isinstance(vector, torch.Tensor) else list(vector)
    if len(values) != dim or any(isinstance(value, list) for value in values):
        raise InvalidInputError(f"{what} must have shape ({dim},), got {_shape_of(vector)}")
    if not all(math.isfinite(value) for value in values):
        raise InvalidInputError(f"{what} has non-finite entries: {values}")
    return [float(value) for value in values]


def _shape_of(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else f"a sequence of length {len(value)}"


def _flag(v: list[float], index: int) -> bool:
    if v[index] not in (0.0, 1.0):
        raise InvalidInputError(
            f"augmentation vector entry {index} is a flag and must be 0 or 1, got {v[index]}"
        )
    return v[index] == 1.0


def _index(v: list[float], index: int, scale: int = 1) -> int:
    """An integer stored as ``n / scale`` (raw when scale is 1)."""
    value = v[index] * scale
    rounded = round(value)
    if abs(value - rounded) > 1e-3:
        what = "a whole number" if scale == 1 else f"a whole multiple of 1/{scale}"
        raise InvalidInputError(f"augmentation vector entry {index} must be {what}, got {v[index]}")
    return int(rounded)


def _check_box(box: tuple[int, int, int, int], height: int, width: int, what: str) -> None:
    top, left, h, w = box
    if not (0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= height and left + w <= width):
        raise InvalidInputError(
            f"{what}: crop box {box} (top, left, height, width) is not inside {height} x {width}"
        )


def _decode_jitter(v: list[float], start: int, what: str) -> dict[str, Any]:
    if not _flag(v, start):
        return dict(color_jitter=False)
    order = tuple(_index(v, start + 1 + k) for k in range(4))
    if sorted(order) != list(IDENTITY_ORDER):
        raise InvalidInputError(
            f"{what}: entries {start + 1}-{start + 4} must be a permutation of 0..3, got {order}"
        )
    brightness, contrast, saturation = (v[start + 5 + k] + 1.0 for k in range(3))
    hue = v[start + 8]
    if min(brightness, contrast, saturation) < 0 or not -0.5 <= hue <= 0.5:
        raise InvalidInputError(f"{what}: colour-jitter factors must be >= 0 and hue in [-0.5, 0.5]")
    return dict(color_jitter=True, jitter_order=order, brightness=brightness, contrast=contrast,
                saturation=saturation, hue=hue)  # fmt: skip


def _decode_blur(v: list[float], start: int, what: str) -> tuple[bool, float]:
    if not _flag(v, start):
        return False, 0.0
    if v[start + 1] <= 0:
        raise InvalidInputError(f"{what}: blur sigma (entry {start + 1}) must be > 0, got {v[start + 1]}")
    return True, v[start + 1]


# --------------------------------------------------------------------------------------------------------------------
# Vectorized samplers (vectors only; sample() decodes them into parameters)


def _uniform(generator: torch.Generator | None, n: int, columns: int) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, columns, generator=generator, dtype=torch.float64, device=device)


def _crop_boxes(
    u: torch.Tensor, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> torch.Tensor:
    """(n, 4) int64 (top, left, h, w) boxes as torchvision's ``RandomResizedCrop.get_params``, from u of (n, 22).

    Columns 0-9 and 10-19 are the area and log-ratio draws of the ten tries, 20-21 place the accepted box.
    """
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, 0:10])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * u[:, 10:20])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    accepted = ok.any(dim=1)
    top = torch.floor(u[:, 20] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u[:, 21] * (width - w + 1)).clamp(max=width - w)
    fallback = _fallback_box(height, width, ratio)
    boxes = torch.stack((top, left, h, w), dim=1)
    boxes[~accepted] = torch.tensor(fallback, dtype=boxes.dtype, device=boxes.device)
    return boxes.to(torch.int64)


def _fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's box when all ten tries fail: the whole input, or the nearest allowed ratio, centred."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _jitter_columns(
    u: torch.Tensor, coin: torch.Tensor, b: float, c: float, s: float, hue: float
) -> torch.Tensor:
    """(n, 9) colour-jitter entries from u of (n, 8) and the on/off coin."""
    order = torch.argsort(u[:, 0:4], dim=1).to(torch.float64)
    factors = []
    for k, strength in enumerate((b, c, s)):
        low, high = max(0.0, 1.0 - strength), 1.0 + strength
        factor = (low + (high - low) * u[:, 4 + k]).to(torch.float32)
        factors.append(factor - 1.0)  # exact in float32 for factors in [0.5, 2] (Sterbenz)
    shift = (-hue + 2 * hue * u[:, 7]).to(torch.float32)
    values = torch.cat((order.to(torch.float32), torch.stack(factors, dim=1), shift[:, None]), dim=1)
    values = torch.where(coin[:, None], values, torch.tensor([*IDENTITY_ORDER, 0, 0, 0, 0], dtype=torch.float32,
                                                             device=values.device))  # fmt: skip
    return torch.cat((coin[:, None].to(torch.float32), values), dim=1)


def _blur_columns(u: torch.Tensor, coin: torch.Tensor, sigma: tuple[float, float]) -> torch.Tensor:
    value = (sigma[0] + (sigma[1] - sigma[0]) * u).to(torch.float32)
    return torch.stack((coin.to(torch.float32), torch.where(coin, value, 0.0)), dim=1)


def _sample_audio_vectors(cfg: AudioAugmentConfig, n: int, generator: torch.Generator | None) -> torch.Tensor:
    frames, bins = cfg.target_length, cfg.num_mel_bins
    u = _uniform(generator, n, 6 + 22 + 9 + 2 + 2)
    spec = u[:, 0] < cfg.p_specaug
    time_len = u[:, 1] * cfg.time_mask
    time_start = torch.floor(u[:, 2] * (frames - time_len))
    freq_len = u[:, 3] * cfg.freq_mask
    freq_start = torch.floor(u[:, 4] * (bins - freq_len))
    masks = torch.stack((time_start, time_start + torch.floor(time_len),
                         freq_start, freq_start + torch.floor(freq_len)), dim=1)  # fmt: skip
    shift = (torch.floor(u[:, 5] * 2 * frames) - frames) / frames
    spec_cols = torch.cat((spec[:, None].double(), masks, spec[:, None].double(), shift[:, None]), dim=1)
    spec_cols = torch.where(spec[:, None], spec_cols, 0.0).to(torch.float32)
    boxes = _crop_boxes(u[:, 6:28], frames, bins, cfg.crop_scale, cfg.crop_ratio).to(torch.float64)
    scale = torch.tensor([bins, frames, bins, frames], dtype=torch.float64, device=boxes.device)
    crop_cols = torch.cat((torch.ones_like(boxes[:, :1]), boxes / scale), dim=1).to(torch.float32)
    jitter = _jitter_columns(u[:, 28:36], u[:, 36] < cfg.p_jitter, cfg.brightness, cfg.contrast, cfg.saturation,
                             cfg.hue)  # fmt: skip
    blur = _blur_columns(u[:, 37], u[:, 38] < cfg.p_blur, cfg.sigma)
    flip = (u[:, 39] < cfg.p_flip).to(torch.float32)[:, None]
    return torch.cat((spec_cols, crop_cols, jitter, blur, flip), dim=1)


def _sample_visual_vectors(
    cfg: VisualAugmentConfig, n: int, generator: torch.Generator | None, height: int, width: int
) -> torch.Tensor:
    u = _uniform(generator, n, 22 + 9 + 2 + 2)
    boxes = _crop_boxes(u[:, 0:22], height, width, cfg.crop_scale, cfg.crop_ratio).to(torch.float64)
    scale = torch.tensor([height, width, height, width], dtype=torch.float64, device=boxes.device)
    crop_cols = torch.cat((torch.ones_like(boxes[:, :1]), boxes / scale), dim=1).to(torch.float32)
    jitter = _jitter_columns(u[:, 22:30], u[:, 30] < cfg.p_jitter, cfg.brightness, cfg.contrast, cfg.saturation,
                             cfg.hue)  # fmt: skip
    blur = _blur_columns(u[:, 31], u[:, 32] < cfg.p_blur, cfg.sigma)
    flags = torch.stack((u[:, 33] < cfg.p_flip, u[:, 34] < cfg.p_gray), dim=1).to(torch.float32)
    return torch.cat((crop_cols, jitter, blur, flags), dim=1)


# --------------------------------------------------------------------------------------------------------------------
# Batched tensor operations on (N, C, H, W) with per-item parameters


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-item scalars shaped (N, 1, 1, 1) to broadcast over an (N, C, H, W) tensor."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1)


def _on_items(
    x: torch.Tensor, items: list[int], op: Callable[[torch.Tensor, list[int]], torch.Tensor]
) -> torch.Tensor:
    """``op`` applied to the listed batch items only (out of place); ``op`` gets the sub-batch and the item ids."""
    if not items:
        return x
    if len(items) == x.shape[0]:
        return op(x, items)
    index = torch.tensor(items, device=x.device)
    return x.index_copy(0, index, op(x.index_select(0, index), items))


def _resized_crops(
    x: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]], size: tuple[int, int]
) -> torch.Tensor:
    """Crop each item to its (top, left, h, w) box and resize to ``size`` (bilinear, antialiased when shrinking)."""
    results = []
    for k, (top, left, h, w) in enumerate(boxes):
        item = x[k : k + 1, :, top : top + h, left : left + w]
        if (h, w) != size:
            shrink = h > size[0] or w > size[1]
            item = F.interpolate(item, size=size, mode="bilinear", align_corners=False, antialias=shrink)
            if len(boxes) == 1:
                return item
        results.append(item)
    return torch.cat(results)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma with torchvision's weights, (N, 1, H, W)."""
    red, green, blue = x.unbind(dim=1)
    return (GREY_WEIGHTS[0] * red + GREY_WEIGHTS[1] * green + GREY_WEIGHTS[2] * blue).unsqueeze(1)


def _blend_clamped(x: torch.Tensor, other: torch.Tensor, factor: Sequence[float]) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1] (torchvision's float-image blend)."""
    return (_column(factor, x) * x + _column([1.0 - f for f in factor], x) * other).clamp_(0.0, 1.0)


def _contrast_rgb(x: torch.Tensor, factor: Sequence[float], pil_mean: bool) -> torch.Tensor:
    """Blend with the image's mean grey level; Pillow rounds that mean to a whole 8-bit level (``pil_mean``)."""
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    if pil_mean:
        mean = torch.floor(mean * 255.0 + 0.5) / 255.0
    return _blend_clamped(x, mean, factor)


# Offsets of red, green and blue on the six-sector hue wheel of the HSV -> RGB conversion.
_CHANNEL_OFFSETS = (5.0, 3.0, 1.0)
# For a grey pixel rotated into hue sector i, the channel that torchvision sets to the unclamped value v.
_UNCLAMPED_CHANNEL = ((1, 0, 0), (0, 1, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1), (1, 0, 0))


def _hue_rgb(x: torch.Tensor, shift: Sequence[float]) -> torch.Tensor:
    """Rotate the hue of an image in [0, 1] by ``shift`` turns through HSV.

    With v the maximum and d the spread of a pixel's channels, channel c of the result is
    v - d * clamp(min(k, 4 - k), 0, 1) with k = (offset_c + 6 h) mod 6: the HSV -> RGB conversion written without
    per-pixel selects. It stays inside [min, max] of the pixel, so no clamping is needed for inputs in [0, 1].
    """
    red, green, blue = x.unbind(dim=1)
    value = x.amax(dim=1)
    spread = value - x.amin(dim=1)
    inverse = 1.0 / spread.masked_fill(spread == 0, 1.0)
    sixths = torch.where(
        value == red,
        (green - blue) * inverse,
        torch.where(
            value == green, (blue - red).mul_(inverse).add_(2.0), (red - green).mul_(inverse).add_(4.0)
        ),
    )
    turns = sixths.div_(6.0).add_(_column(shift, x)[:, 0])
    scaled = turns.sub_(torch.floor(turns)).mul_(6.0).unsqueeze(1)
    k = scaled + torch.tensor(_CHANNEL_OFFSETS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k.sub_(torch.floor(k / 6.0).mul_(6.0))
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return value.unsqueeze(1) - spread.unsqueeze(1) * weight


def _hue_grey(x: torch.Tensor, shift: Sequence[float]) -> torch.Tensor:
    """torchvision's hue rotation of pixels whose three channels are equal (the faithful audio path).

    A grey pixel keeps its value, but torchvision clamps two of the channels to [0, 1] and leaves the one chosen by
    the hue sector of ``shift`` unclamped, so out-of-range values make the channels differ.
    """
    turns = torch.remainder(torch.tensor(shift, dtype=x.dtype, device=x.device), 1.0)
    sector = torch.floor(turns * 6.0).long().remainder_(6)
    keep = torch.tensor(_UNCLAMPED_CHANNEL, dtype=x.dtype, device=x.device)[sector].view(-1, 3, 1, 1)
    value = x[:, :1]
    clamped = value.clamp(0.0, 1.0)
    return clamped + keep * (value - clamped)


def _jitter_rgb(
    x: torch.Tensor, params: Sequence[AudioAugParams | VisualAugParams], pil_mean: bool, grey: bool
) -> torch.Tensor:
    """torchvision's clamped colour jitter on (N, 3, H, W), each item's four ops in its own order.

    ``pil_mean`` rounds the contrast mean as Pillow; ``grey`` says the three channels are equal (faithful audio),
    which selects the hue rotation that reproduces torchvision on out-of-range values.
    """
    active = [k for k, p in enumerate(params) if p.color_jitter]
    for slot in range(4):
        for op_id in range(4):
            items = [k for k in active if params[k].jitter_order[slot] == op_id]

            def run(sub: torch.Tensor, ids: list[int], op_id: int = op_id) -> torch.Tensor:
                factor = [(params[k].brightness, params[k].contrast, params[k].saturation, params[k].hue)[op_id]
                          for k in ids]  # fmt: skip
                if op_id == 0:
                    return (_column(factor, sub) * sub).clamp_(0.0, 1.0)
                if op_id == 1:
                    return _contrast_rgb(sub, factor, pil_mean)
                if op_id == 2:
                    return _blend_clamped(sub, _grey(sub), factor)
                return _hue_grey(sub, factor) if grey else _hue_rgb(sub, factor)

            x = _on_items(x, items, run)
    return x


def _jitter_spectrogram(x: torch.Tensor, params: Sequence[AudioAugParams]) -> torch.Tensor:
    """Unclamped brightness (scale) and contrast (blend with the mean); they commute, so the order is immaterial."""

    def run(sub: torch.Tensor, ids: list[int]) -> torch.Tensor:
        contrast = [params[k].contrast for k in ids]
        mean = sub.mean(dim=(1, 2, 3), keepdim=True)
        blended = _column(contrast, sub) * sub + _column([1.0 - c for c in contrast], sub) * mean
        return blended * _column([params[k].brightness for k in ids], sub)

    return _on_items(x, [k for k, p in enumerate(params) if p.color_jitter], run)


def _filter_axis(x: torch.Tensor, kernels: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    """Correlate each item along ``dim`` (-1 or -2) with its odd-length kernel row, padding by ``mode``."""
    taps = kernels.shape[1]
    half = taps // 2
    padded = F.pad(x, (half, half, 0, 0) if dim == -1 else (0, 0, half, half), mode=mode)
    length = x.shape[dim]
    weights = kernels.to(x.dtype).view(-1, taps, 1, 1, 1)
    out = padded.narrow(dim, 0, length) * weights[:, 0]
    for tap in range(1, taps):
        out.add_(padded.narrow(dim, tap, length) * weights[:, tap])
    return out


def _gaussian_kernels(sigmas: Sequence[float], taps: int, device: torch.device) -> torch.Tensor:
    """torchvision's sampled, normalized Gaussian rows of ``taps`` = 2 * ceil(sigma) + 1 taps, (N, taps)."""
    half = (taps - 1) / 2
    positions = torch.linspace(-half, half, taps, device=device)
    sigma = torch.tensor(sigmas, dtype=torch.float32, device=device)[:, None]
    density = torch.exp(-0.5 * (positions / sigma) ** 2)
    return density / density.sum(dim=1, keepdim=True)


def _pil_box_kernels(sigmas: Sequence[float], device: torch.device) -> torch.Tensor:
    """(N, taps) rows of Pillow's extended box filter, three passes of which approximate a Gaussian of std sigma.

    A box of radius l + a (l whole) averages 2l + 1 pixels with weight 1 and the next pixel on each side with weight
    a, normalized by 2 (l + a) + 1; rows of one call share l (``_blur`` groups them).
    """
    radii = [_pil_box_radius(s) for s in sigmas]
    whole = max(math.floor(r) for r in radii)
    taps = 2 * whole + 3
    rows = torch.zeros(len(radii), taps, dtype=torch.float64)
    for k, radius in enumerate(radii):
        inner = math.floor(radius)
        centre = taps // 2
        rows[k, centre - inner : centre + inner + 1] = 1.0
        rows[k, centre - inner - 1] = rows[k, centre + inner + 1] = radius - inner
        rows[k] /= 2 * radius + 1
    return rows.to(device)


def _pil_box_radius(sigma: float, passes: int = 3) -> float:
    """Box radius l + a of Pillow's Gaussian blur (Gwosdek et al. 2011, extended box of variance sigma^2 / passes)."""
    variance = sigma * sigma / passes
    whole = math.floor((math.sqrt(12.0 * variance + 1.0) - 1.0) / 2.0)
    frac = (2 * whole + 1) * (whole * (whole + 1) - 3 * variance) / (6 * (variance - (whole + 1) ** 2))
    return whole + frac


def _blur(x: torch.Tensor, params: Sequence[AudioAugParams | VisualAugParams], pil: bool) -> torch.Tensor:
    """Per-item Gaussian blur: torchvision's kernel with reflect padding, or Pillow's box passes (``pil``)."""
    active = [k for k, p in enumerate(params) if p.blur]
    groups: dict[int, list[int]] = {}
    for k in active:
        key = math.floor(_pil_box_radius(params[k].sigma)) if pil else 2 * math.ceil(params[k].sigma) + 1
        groups.setdefault(key, []).append(k)
    for items in groups.values():
        sigmas = [params[k].sigma for k in items]

        def run(sub: torch.Tensor, ids: list[int], sigmas=sigmas) -> torch.Tensor:
            if pil:
                rows = _pil_box_kernels(sigmas, sub.device)
                for dim in (-1, -2):
                    for _ in range(3):
                        sub = _filter_axis(sub, rows, dim, "replicate")
                return sub
            rows = _gaussian_kernels(sigmas, 2 * math.ceil(sigmas[0]) + 1, sub.device)
            return _filter_axis(_filter_axis(sub, rows, -1, "reflect"), rows, -2, "reflect")

        x = _on_items(x, items, run)
    return x


def _flip_last(x: torch.Tensor, flags: Sequence[bool]) -> torch.Tensor:
    return _on_items(x, [k for k, flag in enumerate(flags) if flag], lambda sub, ids: sub.flip(-1))


# --------------------------------------------------------------------------------------------------------------------
# Input checks shared by the augmenters


def _check_tensor(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InvalidInputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _params_list(params: Any, batched: bool, count: int, kind: type, name: str) -> list[Any]:
    if not batched:
        if not isinstance(params, kind):
            raise InvalidInputError(
                f"params for a single {name} must be one {kind.__name__}, got {type(params).__name__}"
            )
        return [params]
    if isinstance(params, kind) or not isinstance(params, Sequence):
        raise InvalidInputError(
            f"params for a batch of {count} {name}s must be a sequence of {count} {kind.__name__}"
        )
    if len(params) != count or not all(isinstance(p, kind) for p in params):
        raise InvalidInputError(
            f"params for a batch of {count} {name}s must be a sequence of {count} {kind.__name__}, got {len(params)} items"
        )
    return list(params)


def _params_sequence(params: Any, kind: type) -> list[Any]:
    if not isinstance(params, Sequence) or not all(isinstance(p, kind) for p in params):
        raise InvalidInputError(
            f"params must be one {kind.__name__} or a sequence of them, got {type(params).__name__}"
        )
    return list(params)


def _check_common(p: AudioAugParams | VisualAugParams, what: str) -> None:
    """Checks of the colour-jitter and blur fields, which the two parameter types share."""
    if p.color_jitter:
        if sorted(p.jitter_order) != list(IDENTITY_ORDER):
            raise InvalidInputError(
                f"{what}: jitter_order must be a permutation of 0..3, got {p.jitter_order}"
            )
        if min(p.brightness, p.contrast, p.saturation) < 0 or not -0.5 <= p.hue <= 0.5:
            raise InvalidInputError(f"{what}: colour-jitter factors must be >= 0 and hue in [-0.5, 0.5]")
    if p.blur and not p.sigma > 0:
        raise InvalidInputError(f"{what}: blur sigma must be > 0, got {p.sigma}")


def _check_count(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidInputError(f"n (number of vectors) must be a non-negative integer, got {n!r}")


def _config_from(cfg_type: type, config: Any, overrides: dict[str, Any]) -> Any:
    if config is None:
        return cfg_type(**overrides)
    if not isinstance(config, cfg_type):
        raise ConfigError(f"config must be a {cfg_type.__name__}, got {type(config).__name__}")
    return cfg_type(**{**asdict(config), **overrides}) if overrides else config


# --------------------------------------------------------------------------------------------------------------------
# Augmenters


class AudioAugmenter:
    """Spectrogram augmentation with the authors' 24-d parameter vector (see the module docstring)."""

    dim = AUDIO_VECTOR_DIM

    def __init__(self, config: AudioAugmentConfig | None = None, **overrides: Any) -> None:
        self.config: AudioAugmentConfig = _config_from(AudioAugmentConfig, config, overrides)

    @classmethod
    def for_config(cls, config: EquiAVConfig, **overrides: Any) -> AudioAugmenter:
        """The authors' augmentation rescaled to the model's input (``target_length`` x ``num_mel_bins``)."""
        if config.audio_aug_dim != AUDIO_VECTOR_DIM:
            raise ConfigError(f"config field 'audio_aug_dim' must be {AUDIO_VECTOR_DIM} for this augmenter, "
                              f"got {config.audio_aug_dim}")  # fmt: skip
        return cls(AudioAugmentConfig.for_input(config.target_length, config.num_mel_bins, **overrides))

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.config.target_length, self.config.num_mel_bins

    def sample_vectors(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 24) float32 vectors from the authors' joint distribution, on the generator's device."""
        _check_count(n)
        return _sample_audio_vectors(self.config, n, generator)

    def sample(self, generator: torch.Generator | None = None) -> AudioAugParams:
        return self.decode(self.sample_vectors(1, generator)[0])

    def sample_batch(self, n: int, generator: torch.Generator | None = None) -> list[AudioAugParams]:
        return self.decode(self.sample_vectors(n, generator))

    def vector(self, params: AudioAugParams | Sequence[AudioAugParams]) -> torch.Tensor:
        """(24,) for one parameter object, (n, 24) for a sequence."""
        frames, bins = self.input_shape
        if isinstance(params, AudioAugParams):
            return params.to_vector(frames, bins)
        items = _params_sequence(params, AudioAugParams)
        return torch.stack([p.to_vector(frames, bins) for p in items]) if items else torch.empty(0, self.dim)

    def decode(self, vector: torch.Tensor | Sequence[float]) -> AudioAugParams | list[AudioAugParams]:
        """Parameters of a (24,) vector, or a list of them for (n, 24)."""
        frames, bins = self.input_shape
        if isinstance(vector, torch.Tensor) and vector.dim() == 2:
            return [AudioAugParams.from_vector(row, frames, bins) for row in vector.detach().cpu()]
        return AudioAugParams.from_vector(vector, frames, bins)

    def identity_params(self) -> AudioAugParams:
        """In-distribution "no augmentation": the whole input as crop, everything else off."""
        frames, bins = self.input_shape
        return AudioAugParams(crop=True, crop_box=(0, 0, frames, bins))

    def identity_vector(self) -> torch.Tensor:
        return self.vector(self.identity_params())

    def apply(self, x: torch.Tensor, params: AudioAugParams | Sequence[AudioAugParams]) -> torch.Tensor:
        """Augment a normalized fbank (T, F) or a batch (B, T, F); faithful mode returns 3 channels (see docstring)."""
        x = _check_tensor(x, "audio input")
        shape = self.input_shape
        if x.dim() not in (2, 3) or tuple(x.shape[-2:]) != shape:
            raise InvalidInputError(f"audio input must have shape (T, F) or (B, T, F) with (T, F) = {shape}, "
                                    f"got {tuple(x.shape)}")  # fmt: skip
        batched = x.dim() == 3
        items = _params_list(params, batched, x.shape[0] if batched else 1, AudioAugParams, "audio input")
        for p in items:
            self._check_params(p)
        out = self._augment(x.reshape(-1, 1, *shape), items)
        return out if batched else out[0]

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample, apply and encode: (augmented input, vector) for one item, or (batch, (B, 24)) for a batch."""
        x = _check_tensor(x, "audio input")
        if x.dim() == 3:
            params = self.sample_batch(x.shape[0], generator)
            return self.apply(x, params), self.vector(params)
        params = self.sample(generator)
        return self.apply(x, params), self.vector(params)

    def _check_params(self, p: AudioAugParams) -> None:
        frames, bins = self.input_shape
        if p.crop:
            _check_box(p.crop_box, frames, bins, "audio params")
        for name, (start, end), size in (
            ("time_mask", p.time_mask, frames),
            ("freq_mask", p.freq_mask, bins),
        ):
            if p.spec_augment and not 0 <= start <= end <= size:
                raise InvalidInputError(f"audio params: {name} {(start, end)} is not inside [0, {size}]")
        _check_common(p, "audio params")

    def _augment(self, x: torch.Tensor, params: list[AudioAugParams]) -> torch.Tensor:
        faithful = self.config.faithful
        frames, bins = self.input_shape
        masked = [k for k, p in enumerate(params) if p.spec_augment]
        shifted = [] if faithful else [k for k, p in enumerate(params) if p.time_shift and p.shift % frames]
        if masked or shifted:
            x = x.clone()
        for k in masked:
            (t0, t1), (f0, f1) = params[k].time_mask, params[k].freq_mask
            x[k, :, t0:t1, :] = 0.0
            x[k, :, :, f0:f1] = 0.0
        for k in shifted:
            x[k] = torch.roll(x[k], params[k].shift, dims=-2)
        x = _resized_crops(
            x, [p.crop_box if p.crop else (0, 0, frames, bins) for p in params], (frames, bins)
        )
        if faithful:
            x = _jitter_rgb(x.expand(-1, 3, -1, -1), params, pil_mean=False, grey=True)
        else:
            x = _jitter_spectrogram(x, params)
        x = _blur(x, params, pil=False)
        x = _flip_last(x, [p.flip for p in params])
        return x.expand(-1, 3, -1, -1).contiguous() if faithful else x[:, 0]


class VisualAugmenter:
    """Image augmentation with the authors' 18-d parameter vector (see the module docstring)."""

    dim = VISUAL_VECTOR_DIM

    def __init__(self, config: VisualAugmentConfig | None = None, **overrides: Any) -> None:
        self.config: VisualAugmentConfig = _config_from(VisualAugmentConfig, config, overrides)

    @classmethod
    def for_config(cls, config: EquiAVConfig, **overrides: Any) -> VisualAugmenter:
        """The authors' augmentation with the model's ``image_size`` as output size."""
        if config.visual_aug_dim != VISUAL_VECTOR_DIM:
            raise ConfigError(f"config field 'visual_aug_dim' must be {VISUAL_VECTOR_DIM} for this augmenter, "
                              f"got {config.visual_aug_dim}")  # fmt: skip
        return cls(VisualAugmentConfig(image_size=config.image_size, **overrides))

    @property
    def output_size(self) -> tuple[int, int]:
        return self.config.image_size, self.config.image_size

    def sample_vectors(
        self, n: int, generator: torch.Generator | None = None, input_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(n, 18) float32 vectors; crops are drawn on ``input_size`` (default: S x S, as the authors' model)."""
        _check_count(n)
        height, width = self._input_size(input_size)
        return _sample_visual_vectors(self.config, n, generator, height, width)

    def sample(
        self, generator: torch.Generator | None = None, input_size: tuple[int, int] | None = None
    ) -> VisualAugParams:
        """Parameters for an input of ``input_size`` (H, W) (default S x S); the crop is drawn in its pixels."""
        return self.decode(self.sample_vectors(1, generator, input_size)[0])

    def sample_batch(
        self, n: int, generator: torch.Generator | None = None, input_size: tuple[int, int] | None = None
    ) -> list[VisualAugParams]:
        return self.decode(self.sample_vectors(n, generator, input_size))

    def vector(self, params: VisualAugParams | Sequence[VisualAugParams]) -> torch.Tensor:
        """(18,) for one parameter object, (n, 18) for a sequence."""
        if isinstance(params, VisualAugParams):
            return params.to_vector()
        items = _params_sequence(params, VisualAugParams)
        return torch.stack([p.to_vector() for p in items]) if items else torch.empty(0, self.dim)

    def decode(self, vector: torch.Tensor | Sequence[float]) -> VisualAugParams | list[VisualAugParams]:
        """Parameters of an (18,) vector, or a list of them for (n, 18)."""
        if isinstance(vector, torch.Tensor) and vector.dim() == 2:
            return [VisualAugParams.from_vector(row) for row in vector.detach().cpu()]
        return VisualAugParams.from_vector(vector)

    def identity_params(self) -> VisualAugParams:
        """In-distribution "no augmentation": the whole input as crop, everything else off."""
        return VisualAugParams(crop=True, crop_box=(0.0, 0.0, 1.0, 1.0))

    def identity_vector(self) -> torch.Tensor:
        return self.vector(self.identity_params())

    def apply(self, x: torch.Tensor, params: VisualAugParams | Sequence[VisualAugParams]) -> torch.Tensor:
        """Augment an image (3, H, W) or a batch (B, 3, H, W) in [0, 1] to (3, S, S) / (B, 3, S, S) in [0, 1]."""
        x = _check_tensor(x, "image")
        if x.dim() not in (3, 4) or x.shape[-3] != 3 or min(x.shape[-2:]) < 1:
            raise InvalidInputError(f"image must have shape (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
        batched = x.dim() == 4
        items = _params_list(params, batched, x.shape[0] if batched else 1, VisualAugParams, "image")
        for p in items:
            _check_common(p, "visual params")
        out = self._augment(x.reshape(-1, *x.shape[-3:]), items)
        return out if batched else out[0]

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample (crops on x's own size), apply and encode: (augmented image, vector), or the batched pair."""
        x = _check_tensor(x, "image")
        size = tuple(x.shape[-2:])
        if x.dim() == 4:
            params = self.sample_batch(x.shape[0], generator, size)
            return self.apply(x, params), self.vector(params)
        params = self.sample(generator, size)
        return self.apply(x, params), self.vector(params)

    def _input_size(self, input_size: tuple[int, int] | None) -> tuple[int, int]:
        if input_size is None:
            return self.output_size
        if len(input_size) != 2 or min(input_size) < 1:
            raise InvalidInputError(
                f"input_size must be (height, width) of positive integers, got {input_size!r}"
            )
        return int(input_size[0]), int(input_size[1])

    def _augment(self, x: torch.Tensor, params: list[VisualAugParams]) -> torch.Tensor:
        faithful = self.config.faithful
        boxes = [_pixel_box(p, *x.shape[-2:]) for p in params]
        x = _resized_crops(x, boxes, self.output_size)
        x = _jitter_rgb(x, params, pil_mean=faithful, grey=False)
        x = _blur(x, params, pil=faithful)
        x = _flip_last(x, [p.flip for p in params])
        grey = [k for k, p in enumerate(params) if p.grayscale]
        return _on_items(x, grey, lambda sub, ids: _grey(sub).repeat(1, 3, 1, 1))


def _pixel_box(p: VisualAugParams, height: int, width: int) -> tuple[int, int, int, int]:
    """The fractional crop of ``p`` in pixels of a (height, width) input (the whole input without crop)."""
    if not p.crop:
        return 0, 0, height, width
    top, left, h, w = p.crop_box
    h_px = min(max(round(h * height), 1), height)
    w_px = min(max(round(w * width), 1), width)
    return min(round(top * height), height - h_px), min(round(left * width), width - w_px), h_px, w_px


__all__ = [
    "AUDIO_VECTOR_DIM",
    "VISUAL_VECTOR_DIM",
    "AudioAugmentConfig",
    "VisualAugmentConfig",
    "AudioAugParams",
    "VisualAugParams",
    "AudioAugmenter",
    "VisualAugmenter",
]
