"""Image front-end: decode files, convert any PIL mode to RGB, and turn images into normalized model inputs.

The model's visual input (reference section 7.3) is: resize the short side to ``config.image_resize`` (bicubic),
center-crop ``config.image_size``, scale to [0, 1] and normalize with the ImageNet mean and std.

Accepted inputs and the path each one takes:

* a PIL image, a file path, or a ``uint8`` numpy array are resized with PIL, exactly as
  ``torchvision.transforms.Resize(image_resize, InterpolationMode.BICUBIC)`` (or the configured
  ``image_interpolation``) + ``CenterCrop(image_size)`` +
  ``ToTensor()`` + ``Normalize(mean, std)`` do on a PIL image (same output sizes, same crop offsets, same float ops);
* a torch tensor (any device) or a float numpy array is resized with ``torch.nn.functional.interpolate``
  (``antialias=True``, clamped to [0, 1]). Its kernel is PIL's, but PIL rounds and clips to 8 bits after each of
  its two 1-D passes while torch stays in float, so this path is close to the PIL one, not equal: on real video
  frames the normalized outputs differ by about 0.005 on average and below 0.1 at worst. The result stays on the tensor's device.

Layout rule for arrays and tensors: 2-D means grayscale (H, W); 3-D needs 1, 3 or 4 channels (gray, RGB, RGBA) on one
side. Numpy follows the PIL convention (H, W, C) and torch the torchvision convention (C, H, W); when a shape fits both
layouts, that convention wins, otherwise the other layout is accepted too. ``uint8`` values are 0..255; float values
must lie in [0, 1] (a tolerance of 1e-3 is clamped away).

Transparency (RGBA, LA, PA, palette or grayscale images with a transparent color) is composited on a white background,
as a browser shows it; dropping alpha instead would reveal whatever color the transparent pixels happen to store.
Any image of at least 1x1 pixel is accepted: upsampling a tiny image is well defined for both PIL and torch. Images
whose resized size (before the crop) would exceed ``PIL.Image.MAX_IMAGE_PIXELS`` (very thin strips, e.g. 1 x 50000)
are refused with ``InvalidInputError`` rather than allocating gigabytes; raise that limit for such trusted images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .config import EquiAVConfig
from .errors import ImageDecodeError, InvalidInputError
from .paths import as_path, file_problem, shown

ImageInput = Image.Image | str | os.PathLike | np.ndarray | torch.Tensor

_PIL_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
# torch mode and antialias flag closest to each PIL filter ("nearest-exact" samples pixel centers as PIL does).
_TORCH_MODES = {
    "bicubic": ("bicubic", True),
    "bilinear": ("bilinear", True),
    "nearest": ("nearest-exact", False),
}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
_CHANNEL_COUNTS = (1, 3, 4)
_FLOAT_TOLERANCE = 1e-3
_WHITE = (255, 255, 255, 255)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully into an RGB PIL image, applying its EXIF orientation.

    Raises ``ImageDecodeError`` naming the file for a missing, truncated, corrupt or non-image file, for a path that
    is a directory, a FIFO, a symbolic link loop or a URL (never fetched), for a header whose lengths make the decoder
    run out of memory, and for images above PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; raise it
    for trusted huge files). PIL itself only warns up to twice that limit; here the limit is enforced from the
    header, before any pixel is decoded.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(
            f"load_image expects a file path (str or os.PathLike), got {type(path).__name__}"
        )
    name = shown(path)
    problem = file_problem(path)
    if problem:
        raise ImageDecodeError(f"cannot read image {name}: the path {problem}")
    try:
        with Image.open(as_path(path)) as image:
            _check_pixel_count(image.width * image.height)
            image.load()  # decode every pixel now so a truncated file fails here, not later
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(
            f"refusing to decode image {name}: {error} Raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted."
        ) from error
    except MemoryError as error:
        raise ImageDecodeError(f"cannot decode image {name}: its header's sizes exhaust memory") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"cannot decode image {name}: {error}") from error
    return to_rgb(image)


def _check_pixel_count(pixels: int) -> None:
    """Raise PIL's decompression-bomb error for more than ``Image.MAX_IMAGE_PIXELS`` pixels (None: no limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and pixels > limit:
        raise Image.DecompressionBombError(f"Image size ({pixels} pixels) exceeds limit of {limit} pixels.")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB.

    Transparent images are composited on white. 16-bit images (``I;16*``) are scaled by 255/65535. ``I`` images are
    read as 16-bit when their values fit 0..65535 (PNG and TIFF), ``F`` images as [0, 1] or else 0..255 when their
    values fit; other ``I``/``F`` ranges are stretched from their min..max; NaN or
    infinite ``F`` pixels raise ``InvalidInputError``. CMYK, YCbCr, LAB, HSV, palette and
    bilevel images use PIL's conversion (CMYK ignores any ICC profile).
    """
    if not isinstance(image, Image.Image):
        raise InvalidInputError(f"to_rgb expects a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        image = Image.fromarray(_high_depth_to_uint8(np.asarray(image), mode), mode="L")
        return image.convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        try:
            rgba = image.convert("RGBA")
        except ValueError as error:
            raise InvalidInputError(f"cannot convert a PIL image of mode {mode!r} to RGB: {error}") from error
        return Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), rgba).convert("RGB")
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise InvalidInputError(f"cannot convert a PIL image of mode {mode!r} to RGB: {error}") from error


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map 16/32-bit integer or float pixel values to 0..255 (see ``to_rgb`` for the range rule).

    NaN or infinite pixels (float TIFFs, mode "F") are refused, as they are in float arrays and tensors.
    """
    values = values.astype(np.float64)
    if values.size and not np.isfinite([values.min(), values.max()]).all():
        raise InvalidInputError(f"PIL image of mode {mode!r} contains NaN or infinite pixel values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        scaled = values * (255.0 / 65535.0)
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif mode == "F" and low >= 0 and high <= 255:
        scaled = values
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def preprocess_image(image: ImageInput, config: EquiAVConfig | None = None) -> torch.Tensor:
    """Turn one image into a normalized float32 tensor of shape (3, image_size, image_size).

    See the module docstring for the accepted inputs, their layouts and which resize each one uses.
    """
    config = config or EquiAVConfig()
    if isinstance(image, (str, os.PathLike)):
        try:
            return _preprocess_pil(load_image(image), config)
        except InvalidInputError as error:
            raise InvalidInputError(f"image {shown(image)}: {error}") from error
    if isinstance(image, Image.Image):
        return _preprocess_pil(to_rgb(image), config)
    if isinstance(image, np.ndarray):
        return _preprocess_array(image, config)
    if isinstance(image, torch.Tensor):
        return _preprocess_tensor(_tensor_to_chw(image), config)
    raise InvalidInputError(
        f"image must be a PIL image, a file path, a numpy array or a torch tensor, got {type(image).__name__}"
    )


def preprocess_images(images: Sequence[ImageInput], config: EquiAVConfig | None = None) -> torch.Tensor:
    """Preprocess a list of images into a batch of shape (B, 3, image_size, image_size).

    Errors name the position of the offending image in the list.
    """
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)) or not isinstance(
        images, Sequence
    ):
        raise InvalidInputError(
            f"preprocess_images expects a list of images, got {type(images).__name__}; use preprocess_image for one"
        )
    if len(images) == 0:
        raise InvalidInputError("preprocess_images got an empty list of images")
    batch = []
    for index, image in enumerate(images):
        try:
            batch.append(preprocess_image(image, config))
        except InvalidInputError as error:
            raise InvalidInputError(f"images[{index}]: {error}") from error
    device = batch[0].device
    return torch.stack([item.to(device) for item in batch])


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after scaling the short side to ``short_side``, rounded down as torchvision does."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def _checked_resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``resized_size``, refusing sizes above ``Image.MAX_IMAGE_PIXELS`` (extreme aspect ratios)."""
    new_height, new_width = resized_size(height, width, short_side)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and new_height * new_width > limit:
        raise InvalidInputError(
            f"image of {width}x{height} pixels would be resized to {new_width}x{new_height} before the center crop, "
            f"more than PIL.Image.MAX_IMAGE_PIXELS ({limit}); crop it to a sane aspect ratio or raise that limit"
        )
    return new_height, new_width


def _preprocess_pil(image: Image.Image, config: EquiAVConfig) -> torch.Tensor:
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInputError(f"PIL image of {width}x{height} pixels: width and height must be at least 1")
    new_height, new_width = _checked_resized_size(height, width, config.image_resize)
    if (new_height, new_width) != (height, width):
        image = image.resize((new_width, new_height), _PIL_FILTERS[config.image_interpolation])
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    # Crop before the float conversion (same values) so a long resized image is never held as float.
    return _normalize(_center_crop(pixels, config.image_size).to(torch.float32).div(255), config)


def _preprocess_tensor(chw: torch.Tensor, config: EquiAVConfig) -> torch.Tensor:
    """Resize, crop and normalize a (C, H, W) tensor with C in {1, 3, 4}, uint8 or float in [0, 1]."""
    values = chw.to(torch.float32).div(255) if chw.dtype == torch.uint8 else _checked_float(chw)
    rgb = _flatten_channels(values)
    height, width = rgb.shape[-2:]
    new_height, new_width = _checked_resized_size(height, width, config.image_resize)
    if (new_height, new_width) != (height, width):
        mode, antialias = _TORCH_MODES[config.image_interpolation]
        extra = {"align_corners": False} if mode in ("bicubic", "bilinear") else {}
        batch = F.interpolate(
            rgb[None], size=(new_height, new_width), mode=mode, antialias=antialias, **extra
        )
        rgb = batch[0].clamp(0, 1)
    return _normalize(_center_crop(rgb, config.image_size), config)


def _preprocess_array(array: np.ndarray, config: EquiAVConfig) -> torch.Tensor:
    axis = _channel_axis(array.shape, array.dtype, channels_last=True)
    chw = array[None] if axis is None else np.moveaxis(array, axis, 0)
    if array.dtype == np.uint8:
        modes = {1: "L", 3: "RGB", 4: "RGBA"}
        hwc = np.ascontiguousarray(chw[0] if chw.shape[0] == 1 else np.moveaxis(chw, 0, -1))
        return _preprocess_pil(to_rgb(Image.fromarray(hwc, modes[chw.shape[0]])), config)
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(_dtype_message(array.shape, array.dtype))
    return _preprocess_tensor(torch.from_numpy(np.array(chw, dtype=np.float32)), config)


def _tensor_to_chw(tensor: torch.Tensor) -> torch.Tensor:
    axis = _channel_axis(tuple(tensor.shape), tensor.dtype, channels_last=False)
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise InvalidInputError(_dtype_message(tuple(tensor.shape), tensor.dtype))
    return tensor[None] if axis is None else tensor.movedim(axis, 0)


def _channel_axis(shape: tuple[int, ...], dtype: object, channels_last: bool) -> int | None:
    """Channel axis of an image shape (None for 2-D gray), preferring the last axis for numpy, the first for torch.

    Raises ``InvalidInputError`` for shapes that are not images and for empty images.
    """
    if len(shape) == 2:
        axis = None
    elif len(shape) == 3 and (shape[0] in _CHANNEL_COUNTS or shape[-1] in _CHANNEL_COUNTS):
        last_fits = shape[-1] in _CHANNEL_COUNTS
        first_fits = shape[0] in _CHANNEL_COUNTS
        axis = 2 if last_fits and (channels_last or not first_fits) else 0
    else:
        raise InvalidInputError(
            f"image array has shape {tuple(shape)} (dtype {dtype}); expected (H, W), (H, W, C) or (C, H, W) "
            f"with C in {_CHANNEL_COUNTS}"
        )
    spatial = [size for index, size in enumerate(shape) if index != axis]
    if min(spatial) < 1:
        raise InvalidInputError(f"image array has shape {tuple(shape)}: height and width must be at least 1")
    return axis


def _dtype_message(shape: tuple[int, ...], dtype: object) -> str:
    return f"image array has dtype {dtype} (shape {tuple(shape)}); expected uint8 (0..255) or float (0..1)"


def _checked_float(values: torch.Tensor) -> torch.Tensor:
    """float32 copy of a float image after checking it is finite and within [0, 1]."""
    values = values.to(torch.float32)
    low, high = (float(v) for v in torch.aminmax(values))  # NaN or infinite when any value is
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InvalidInputError(f"float image of shape {tuple(values.shape)} contains NaN or infinite values")
    if low < -_FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
        raise InvalidInputError(
            f"float image values must lie in [0, 1], got min {low:.4g} and max {high:.4g}; "
            "divide 0..255 data by 255 or pass it as uint8"
        )
    return values.clamp(0, 1)


def _flatten_channels(values: torch.Tensor) -> torch.Tensor:
    """(1|3|4, H, W) in [0, 1] -> (3, H, W): gray is repeated, alpha is composited on white."""
    if values.shape[0] == 1:
        return values.expand(3, -1, -1)
    if values.shape[0] == 4:
        alpha = values[3:]
        return values[:3] * alpha + (1 - alpha)
    return values


def _center_crop(values: torch.Tensor, size: int) -> torch.Tensor:
    """Center crop (C, H, W) to (C, size, size) with torchvision's offsets, zero-padding a side that is too short."""
    height, width = values.shape[-2:]
    pad_height, pad_width = max(size - height, 0), max(size - width, 0)
    if pad_height or pad_width:
        padding = (pad_width // 2, (pad_width + 1) // 2, pad_height // 2, (pad_height + 1) // 2)
        values = F.pad(values, padding)
        height, width = values.shape[-2:]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return values[:, top : top + size, left : left + size]


def _normalize(values: torch.Tensor, config: EquiAVConfig) -> torch.Tensor:
    mean = torch.tensor(config.image_mean, dtype=torch.float32, device=values.device).view(3, 1, 1)
    std = torch.tensor(config.image_std, dtype=torch.float32, device=values.device).view(3, 1, 1)
    return ((values - mean) / std).contiguous()
