"""The augmentation-vector layout that EquiAV's transformation predictors read, and the distribution it is drawn from.

Part of the model's contract: the predictor of every released checkpoint was trained on vectors of exactly this
layout (reference section 2), and the model's fixed centroid views (``EquiAVModel.audio_views`` / ``visual_views``)
are drawn from this distribution. Applying an augmentation to data is the trainer's job
(``equiav.training.augment``); this module only describes, encodes, decodes and samples augmentations.

* ``AudioAugParams`` / ``VisualAugParams``: one augmentation, field by field; ``to_vector`` / ``from_vector``.
* ``AudioAugmentConfig`` / ``VisualAugmentConfig``: probabilities and ranges (defaults: the authors' pretraining);
  ``for_model(config)`` sizes them for an ``EquiAVConfig``.
* ``sample_audio_vectors`` / ``sample_visual_vectors``: (n, d) float32 vectors from that joint distribution,
  vectorized over n; all randomness comes from the given ``torch.Generator`` (the global one when ``None``).

Audio vector (24): 0 SpecAugment flag; 1-2 time-mask start, end (raw frame indices); 3-4 frequency-mask start, end
(raw bin indices); 5 time-shift flag (same coin as 0); 6 shift n / T, n uniform in [-T, T); 7 crop flag (always 1);
8-11 crop (top frame i / F, first bin j / T, frames h / F, bins w / T: the authors divide by the other axis' length);
12 colour-jitter flag; 13-16 jitter order (ids 0 brightness, 1 contrast, 2 saturation, 3 hue; [0, 1, 2, 3] when
off); 17-19 brightness, contrast, saturation factor - 1; 20 hue; 21 blur flag; 22 blur sigma; 23 flip flag.
Visual vector (18): 0 crop flag (always 1); 1-4 crop top / H, left / W, height / H, width / W; 5 jitter flag;
6-9 jitter order; 10-12 factor - 1; 13 hue; 14 blur flag; 15 sigma; 16 horizontal-flip flag; 17 grayscale flag.
Entries of an augmentation that is off are 0.

Random resized crops follow torchvision's ``RandomResizedCrop.get_params``: up to ten tries of area and log-uniform
aspect ratio, then the whole input (or the nearest allowed ratio) as fallback. The audio crop's height is along time
and its width along frequency, with ratio width / height in (1/10, 1.5/8) at 1024 x 128;
``AudioAugmentConfig.for_input`` scales the ratio and the mask maxima to other input sizes so the crops and masks
cover the same fractions of the input. Visual crops are fractions of the input; ``sample_visual_vectors`` draws them
on the pixel grid of ``input_size`` (default S x S, as the authors' model sampler did).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .config import EquiAVConfig
from .errors import ConfigError, InvalidInputError

AUDIO_VECTOR_DIM = 24
VISUAL_VECTOR_DIM = 18
IDENTITY_ORDER = (0, 1, 2, 3)

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


@dataclass(frozen=True, kw_only=True)
class _SharedAugmentConfig:
    """The probabilities and ranges that the audio and the visual augmentation share (keyword-only fields)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
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
        for name in ("p_jitter", "p_blur", "p_flip"):
            _check_probability(name, getattr(self, name))
        _check_range("crop_scale", self.crop_scale, low=1e-9)
        _check_range("crop_ratio", self.crop_ratio, low=1e-9)  # type: ignore[attr-defined]
        _check_range("sigma", self.sigma, low=1e-9)
        _check_jitter(self.brightness, self.contrast, self.saturation, self.hue)


@dataclass(frozen=True)
class AudioAugmentConfig(_SharedAugmentConfig):
    """Input geometry, probabilities and ranges of the audio augmentation (defaults: the authors' pretraining)."""

    target_length: int = _REF_FRAMES
    num_mel_bins: int = _REF_BINS
    p_specaug: float = 0.8
    time_mask: int = 192
    freq_mask: int = 48
    crop_ratio: tuple[float, float] = (1 / 10, 1.5 / 8)

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
        _check_probability("p_specaug", self.p_specaug)
        super().__post_init__()

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

    @classmethod
    def for_model(cls, config: EquiAVConfig, **overrides: Any) -> AudioAugmentConfig:
        """The authors' settings for the model's input (``target_length`` x ``num_mel_bins``)."""
        if config.audio_aug_dim != AUDIO_VECTOR_DIM:
            raise ConfigError(f"config field 'audio_aug_dim' must be {AUDIO_VECTOR_DIM} for this augmentation, "
                              f"got {config.audio_aug_dim}")  # fmt: skip
        return cls.for_input(config.target_length, config.num_mel_bins, **overrides)


@dataclass(frozen=True)
class VisualAugmentConfig(_SharedAugmentConfig):
    """Output size, probabilities and ranges of the visual augmentation (defaults: the authors' pretraining)."""

    image_size: int = 224
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_gray: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 2:
            raise ConfigError(
                f"augmentation config field 'image_size' must be an integer >= 2, got {self.image_size!r}"
            )
        _check_probability("p_gray", self.p_gray)
        super().__post_init__()

    @classmethod
    def for_model(cls, config: EquiAVConfig, **overrides: Any) -> VisualAugmentConfig:
        """The authors' settings with the model's ``image_size`` as output size."""
        if config.visual_aug_dim != VISUAL_VECTOR_DIM:
            raise ConfigError(f"config field 'visual_aug_dim' must be {VISUAL_VECTOR_DIM} for this augmentation, "
                              f"got {config.visual_aug_dim}")  # fmt: skip
        return cls(image_size=config.image_size, **overrides)


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
            check_crop_box(box, frames, bins, "audio augmentation vector")
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


def check_crop_box(box: tuple[int, int, int, int], height: int, width: int, what: str) -> None:
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
# Vectorized samplers


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


def sample_audio_vectors(
    cfg: AudioAugmentConfig, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(n, 24) float32 vectors from the authors' joint distribution, on the generator's device."""
    check_count(n)
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


def sample_visual_vectors(
    cfg: VisualAugmentConfig,
    n: int,
    generator: torch.Generator | None = None,
    input_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """(n, 18) float32 vectors; crops are drawn on ``input_size`` (H, W) (default: S x S, as the authors' model)."""
    check_count(n)
    height, width = _input_size(cfg, input_size)
    u = _uniform(generator, n, 22 + 9 + 2 + 2)
    boxes = _crop_boxes(u[:, 0:22], height, width, cfg.crop_scale, cfg.crop_ratio).to(torch.float64)
    scale = torch.tensor([height, width, height, width], dtype=torch.float64, device=boxes.device)
    crop_cols = torch.cat((torch.ones_like(boxes[:, :1]), boxes / scale), dim=1).to(torch.float32)
    jitter = _jitter_columns(u[:, 22:30], u[:, 30] < cfg.p_jitter, cfg.brightness, cfg.contrast, cfg.saturation,
                             cfg.hue)  # fmt: skip
    blur = _blur_columns(u[:, 31], u[:, 32] < cfg.p_blur, cfg.sigma)
    flags = torch.stack((u[:, 33] < cfg.p_flip, u[:, 34] < cfg.p_gray), dim=1).to(torch.float32)
    return torch.cat((crop_cols, jitter, blur, flags), dim=1)


def check_count(n: int) -> None:
    """Reject a vector count that is not a non-negative integer."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidInputError(f"n (number of vectors) must be a non-negative integer, got {n!r}")


def _input_size(cfg: VisualAugmentConfig, input_size: tuple[int, int] | None) -> tuple[int, int]:
    if input_size is None:
        return cfg.image_size, cfg.image_size
    if len(input_size) != 2 or min(input_size) < 1:
        raise InvalidInputError(
            f"input_size must be (height, width) of positive integers, got {input_size!r}"
        )
    return int(input_size[0]), int(input_size[1])


__all__ = [
    "AUDIO_VECTOR_DIM",
    "VISUAL_VECTOR_DIM",
    "AudioAugmentConfig",
    "VisualAugmentConfig",
    "AudioAugParams",
    "VisualAugParams",
    "check_crop_box",
    "sample_audio_vectors",
    "sample_visual_vectors",
]
