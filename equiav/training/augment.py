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

The vector layout and its distribution are the library's (``equiav.aug_vectors``), since the model's predictors
read them; this module applies augmentations to data.

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

Crops are resized back to the output size with bilinear interpolation (antialiased when shrinking).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from ..aug_vectors import (
    AUDIO_VECTOR_DIM,
    IDENTITY_ORDER,
    VISUAL_VECTOR_DIM,
    AudioAugmentConfig,
    AudioAugParams,
    VisualAugmentConfig,
    VisualAugParams,
    check_crop_box,
    sample_audio_vectors,
    sample_visual_vectors,
)
from ..config import EquiAVConfig
from ..errors import ConfigError, InvalidInputError
from .augment_ops import (
    TORCHVISION_BLUR,
    blur,
    flip_last,
    jitter_rgb,
    jitter_spectrogram,
    on_items,
    resized_crops,
    to_grey,
)
from .pil_ops import PIL_BLUR

if TYPE_CHECKING:
    from typing_extensions import Self

Params = TypeVar("Params", AudioAugParams, VisualAugParams)
Config = TypeVar("Config", AudioAugmentConfig, VisualAugmentConfig)


class _Augmenter(Generic[Params, Config]):
    """What the audio and the visual augmenter share: configuration, encoding, decoding, checks and ``__call__``.

    A subclass names its types and input, and supplies ``sample_vectors``, ``identity_params``, the encoding of one
    parameter object (``_encode`` / ``_decode``), the shape check, the per-item parameter check and the batched
    ``_augment``.
    """

    dim: int
    params_type: type[Params]
    config_type: type[Config]
    input_name: str
    item_dims: int

    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        self.config: Config = _config_from(self.config_type, config, overrides)

    @classmethod
    def for_config(cls, config: EquiAVConfig, **overrides: Any) -> Self:
        """The authors' augmentation sized for the model's input (``config_type.for_model``)."""
        return cls(cls.config_type.for_model(config, **overrides))

    def sample_vectors(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, generator: torch.Generator | None = None) -> Params:
        return self.decode(self.sample_vectors(1, generator)[0])

    def sample_batch(self, n: int, generator: torch.Generator | None = None) -> list[Params]:
        return self.decode(self.sample_vectors(n, generator))

    def vector(self, params: Params | Sequence[Params]) -> torch.Tensor:
        """(d,) for one parameter object, (n, d) for a sequence."""
        if isinstance(params, self.params_type):
            return self._encode(params)
        items = _params_sequence(params, self.params_type)
        return torch.stack([self._encode(p) for p in items]) if items else torch.empty(0, self.dim)

    def decode(self, vector: torch.Tensor | Sequence[float]) -> Params | list[Params]:
        """Parameters of a (d,) vector, or a list of them for (n, d)."""
        if isinstance(vector, torch.Tensor) and vector.dim() == 2:
            return [self._decode(row) for row in vector.detach().cpu()]
        return self._decode(vector)

    def identity_params(self) -> Params:
        raise NotImplementedError

    def identity_vector(self) -> torch.Tensor:
        return self.vector(self.identity_params())

    def apply(self, x: torch.Tensor, params: Params | Sequence[Params]) -> torch.Tensor:
        """The augmented input: one item with one parameter object, or a batch with one per item."""
        x = _check_tensor(x, self.input_name)
        self._check_shape(x)
        batched = x.dim() == self.item_dims + 1
        count = x.shape[0] if batched else 1
        items = _params_list(params, batched, count, self.params_type, self.input_name)
        for p in items:
            self._check_params(p)
        out = self._augment(x.reshape(-1, *x.shape[-self.item_dims :]), items)
        return out if batched else out[0]

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample, apply and encode: (augmented input, vector) for one item, or (batch, (B, d)) for a batch."""
        x = _check_tensor(x, self.input_name)
        options = self._sample_options(x)
        if x.dim() == self.item_dims + 1:
            params = self.sample_batch(x.shape[0], generator, **options)
        else:
            params = self.sample(generator, **options)
        return self.apply(x, params), self.vector(params)

    def _sample_options(self, x: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments of ``sample`` / ``sample_batch`` that depend on the input."""
        return {}

    def _encode(self, params: Params) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, vector: torch.Tensor | Sequence[float]) -> Params:
        raise NotImplementedError

    def _check_shape(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _check_params(self, p: Params) -> None:
        raise NotImplementedError

    def _augment(self, x: torch.Tensor, params: list[Params]) -> torch.Tensor:
        raise NotImplementedError


class AudioAugmenter(_Augmenter[AudioAugParams, AudioAugmentConfig]):
    """Spectrogram augmentation with the authors' 24-d parameter vector (see the module docstring)."""

    dim = AUDIO_VECTOR_DIM
    params_type = AudioAugParams
    config_type = AudioAugmentConfig
    input_name = "audio input"
    item_dims = 2

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.config.target_length, self.config.num_mel_bins

    def sample_vectors(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 24) float32 vectors from the authors' joint distribution, on the generator's device."""
        return sample_audio_vectors(self.config, n, generator)

    def identity_params(self) -> AudioAugParams:
        """In-distribution "no augmentation": the whole input as crop, everything else off."""
        frames, bins = self.input_shape
        return AudioAugParams(crop=True, crop_box=(0, 0, frames, bins))

    def _encode(self, params: AudioAugParams) -> torch.Tensor:
        return params.to_vector(*self.input_shape)

    def _decode(self, vector: torch.Tensor | Sequence[float]) -> AudioAugParams:
        return AudioAugParams.from_vector(vector, *self.input_shape)

    def _check_shape(self, x: torch.Tensor) -> None:
        shape = self.input_shape
        if x.dim() not in (2, 3) or tuple(x.shape[-2:]) != shape:
            raise InvalidInputError(f"audio input must have shape (T, F) or (B, T, F) with (T, F) = {shape}, "
                                    f"got {tuple(x.shape)}")  # fmt: skip

    def _check_params(self, p: AudioAugParams) -> None:
        frames, bins = self.input_shape
        if p.crop:
            check_crop_box(p.crop_box, frames, bins, "audio params")
        for name, (start, end), size in (
            ("time_mask", p.time_mask, frames),
            ("freq_mask", p.freq_mask, bins),
        ):
            if p.spec_augment and not 0 <= start <= end <= size:
                raise InvalidInputError(f"audio params: {name} {(start, end)} is not inside [0, {size}]")
        _check_common(p, "audio params")

    def _augment(self, x: torch.Tensor, params: list[AudioAugParams]) -> torch.Tensor:
        """(N, T, F) -> (N, T, F), or the authors' 3-channel (N, 3, T, F) when faithful."""
        x = x.unsqueeze(1)
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
        x = resized_crops(x, [p.crop_box if p.crop else (0, 0, frames, bins) for p in params], (frames, bins))
        if faithful:
            x = jitter_rgb(x.expand(-1, 3, -1, -1), params, pil_mean=False, grey=True)
        else:
            x = jitter_spectrogram(x, params)
        x = blur(x, params, TORCHVISION_BLUR)
        x = flip_last(x, [p.flip for p in params])
        return x.expand(-1, 3, -1, -1).contiguous() if faithful else x[:, 0]


class VisualAugmenter(_Augmenter[VisualAugParams, VisualAugmentConfig]):
    """Image augmentation with the authors' 18-d parameter vector (see the module docstring)."""

    dim = VISUAL_VECTOR_DIM
    params_type = VisualAugParams
    config_type = VisualAugmentConfig
    input_name = "image"
    item_dims = 3

    @property
    def output_size(self) -> tuple[int, int]:
        return self.config.image_size, self.config.image_size

    def sample_vectors(
        self, n: int, generator: torch.Generator | None = None, input_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(n, 18) float32 vectors; crops are drawn on ``input_size`` (default: S x S, as the authors' model)."""
        return sample_visual_vectors(self.config, n, generator, input_size)

    def sample(
        self, generator: torch.Generator | None = None, input_size: tuple[int, int] | None = None
    ) -> VisualAugParams:
        """Parameters for an input of ``input_size`` (H, W) (default S x S); the crop is drawn in its pixels."""
        return self.decode(self.sample_vectors(1, generator, input_size)[0])

    def sample_batch(
        self, n: int, generator: torch.Generator | None = None, input_size: tuple[int, int] | None = None
    ) -> list[VisualAugParams]:
        return self.decode(self.sample_vectors(n, generator, input_size))

    def identity_params(self) -> VisualAugParams:
        """In-distribution "no augmentation": the whole input as crop, everything else off."""
        return VisualAugParams(crop=True, crop_box=(0.0, 0.0, 1.0, 1.0))

    def _sample_options(self, x: torch.Tensor) -> dict[str, Any]:
        """Crops drawn on the image's own size."""
        return {"input_size": tuple(x.shape[-2:])}

    def _encode(self, params: VisualAugParams) -> torch.Tensor:
        return params.to_vector()

    def _decode(self, vector: torch.Tensor | Sequence[float]) -> VisualAugParams:
        return VisualAugParams.from_vector(vector)

    def _check_shape(self, x: torch.Tensor) -> None:
        if x.dim() not in (3, 4) or x.shape[-3] != 3 or min(x.shape[-2:]) < 1:
            raise InvalidInputError(f"image must have shape (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")

    def _check_params(self, p: VisualAugParams) -> None:
        _check_common(p, "visual params")

    def _augment(self, x: torch.Tensor, params: list[VisualAugParams]) -> torch.Tensor:
        faithful = self.config.faithful
        boxes = [_pixel_box(p, *x.shape[-2:]) for p in params]
        x = resized_crops(x, boxes, self.output_size)
        x = jitter_rgb(x, params, pil_mean=faithful, grey=False)
        x = blur(x, params, PIL_BLUR if faithful else TORCHVISION_BLUR)
        x = flip_last(x, [p.flip for p in params])
        grayscale = [k for k, p in enumerate(params) if p.grayscale]
        return on_items(x, grayscale, lambda sub, ids: to_grey(sub).repeat(1, 3, 1, 1))


def _pixel_box(p: VisualAugParams, height: int, width: int) -> tuple[int, int, int, int]:
    """The fractional crop of ``p`` in pixels of a (height, width) input (the whole input without crop)."""
    if not p.crop:
        return 0, 0, height, width
    top, left, h, w = p.crop_box
    h_px = min(max(round(h * height), 1), height)
    w_px = min(max(round(w * width), 1), width)
    return min(round(top * height), height - h_px), min(round(left * width), width - w_px), h_px, w_px


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


def _config_from(cfg_type: type, config: Any, overrides: dict[str, Any]) -> Any:
    if config is None:
        return cfg_type(**overrides)
    if not isinstance(config, cfg_type):
        raise ConfigError(f"config must be a {cfg_type.__name__}, got {type(config).__name__}")
    return cfg_type(**{**asdict(config), **overrides}) if overrides else config


# The vector layout is re-exported from equiav.aug_vectors, where it lives, beside the augmenters.
__all__ = ["AudioAugmenter", "VisualAugmenter", "AUDIO_VECTOR_DIM", "VISUAL_VECTOR_DIM"]
__all__ += ["AudioAugmentConfig", "VisualAugmentConfig", "AudioAugParams", "VisualAugParams"]
