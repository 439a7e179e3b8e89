"""Batched tensor operations of the augmenters: (N, C, H, W) tensors, each item with its own parameters.

Crops, colour jitter, blur and flips as torchvision computes them on float images, written so that one call serves
a whole batch (items that share an operation run together). Pillow's variants of the blur live in
``equiav.training.pil_ops``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..aug_vectors import AudioAugParams, VisualAugParams

GREY_WEIGHTS = (0.2989, 0.587, 0.114)


def column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-item scalars shaped (N, 1, 1, 1) to broadcast over an (N, C, H, W) tensor."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1)


def on_items(
    x: torch.Tensor, items: list[int], op: Callable[[torch.Tensor, list[int]], torch.Tensor]
) -> torch.Tensor:
    """``op`` applied to the listed batch items only (out of place); ``op`` gets the sub-batch and the item ids."""
    if not items:
        return x
    if len(items) == x.shape[0]:
        return op(x, items)
    index = torch.tensor(items, device=x.device)
    return x.index_copy(0, index, op(x.index_select(0, index), items))


def resized_crops(
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


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma with torchvision's weights, (N, 1, H, W)."""
    red, green, blue = x.unbind(dim=1)
    return (GREY_WEIGHTS[0] * red + GREY_WEIGHTS[1] * green + GREY_WEIGHTS[2] * blue).unsqueeze(1)


def blend_clamped(x: torch.Tensor, other: torch.Tensor, factor: Sequence[float]) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1] (torchvision's float-image blend)."""
    return (column(factor, x) * x + column([1.0 - f for f in factor], x) * other).clamp_(0.0, 1.0)


def contrast_rgb(x: torch.Tensor, factor: Sequence[float], pil_mean: bool) -> torch.Tensor:
    """Blend with the image's mean grey level; Pillow rounds that mean to a whole 8-bit level (``pil_mean``)."""
    mean = to_grey(x).mean(dim=(1, 2, 3), keepdim=True)
    if pil_mean:
        mean = torch.floor(mean * 255.0 + 0.5) / 255.0
    return blend_clamped(x, mean, factor)


# Offsets of red, green and blue on the six-sector hue wheel of the HSV -> RGB conversion.
_CHANNEL_OFFSETS = (5.0, 3.0, 1.0)
# For a grey pixel rotated into hue sector i, the channel that torchvision sets to the unclamped value v.
_UNCLAMPED_CHANNEL = ((1, 0, 0), (0, 1, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1), (1, 0, 0))


def hue_rgb(x: torch.Tensor, shift: Sequence[float]) -> torch.Tensor:
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
    turns = sixths.div_(6.0).add_(column(shift, x)[:, 0])
    scaled = turns.sub_(torch.floor(turns)).mul_(6.0).unsqueeze(1)
    k = scaled + torch.tensor(_CHANNEL_OFFSETS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k.sub_(torch.floor(k / 6.0).mul_(6.0))
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return value.unsqueeze(1) - spread.unsqueeze(1) * weight


def hue_grey(x: torch.Tensor, shift: Sequence[float]) -> torch.Tensor:
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


def jitter_rgb(
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
                    return (column(factor, sub) * sub).clamp_(0.0, 1.0)
                if op_id == 1:
                    return contrast_rgb(sub, factor, pil_mean)
                if op_id == 2:
                    return blend_clamped(sub, to_grey(sub), factor)
                return hue_grey(sub, factor) if grey else hue_rgb(sub, factor)

            x = on_items(x, items, run)
    return x


def jitter_spectrogram(x: torch.Tensor, params: Sequence[AudioAugParams]) -> torch.Tensor:
    """Unclamped brightness (scale) and contrast (blend with the mean); they commute, so the order is immaterial."""

    def run(sub: torch.Tensor, ids: list[int]) -> torch.Tensor:
        contrast = [params[k].contrast for k in ids]
        mean = sub.mean(dim=(1, 2, 3), keepdim=True)
        blended = column(contrast, sub) * sub + column([1.0 - c for c in contrast], sub) * mean
        return blended * column([params[k].brightness for k in ids], sub)

    return on_items(x, [k for k, p in enumerate(params) if p.color_jitter], run)


def filter_axis(x: torch.Tensor, kernels: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
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


def gaussian_kernels(sigmas: Sequence[float], taps: int, device: torch.device) -> torch.Tensor:
    """torchvision's sampled, normalized Gaussian rows of ``taps`` = 2 * ceil(sigma) + 1 taps, (N, taps)."""
    half = (taps - 1) / 2
    positions = torch.linspace(-half, half, taps, device=device)
    sigma = torch.tensor(sigmas, dtype=torch.float32, device=device)[:, None]
    density = torch.exp(-0.5 * (positions / sigma) ** 2)
    return density / density.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` of each item with its sigma (items share 2 * ceil(sigma) + 1 taps)."""
    rows = gaussian_kernels(sigmas, 2 * math.ceil(sigmas[0]) + 1, x.device)
    return filter_axis(filter_axis(x, rows, -1, "reflect"), rows, -2, "reflect")


@dataclass(frozen=True)
class BlurFilter:
    """A blur that runs on groups of items: ``group(sigma)`` says which sigmas can share one call of ``run``."""

    group: Callable[[float], int]
    run: Callable[[torch.Tensor, list[float]], torch.Tensor]


TORCHVISION_BLUR = BlurFilter(group=lambda sigma: 2 * math.ceil(sigma) + 1, run=gaussian_blur)


def blur(
    x: torch.Tensor, params: Sequence[AudioAugParams | VisualAugParams], kind: BlurFilter
) -> torch.Tensor:
    """Per-item Gaussian blur of the items whose parameters switch it on, by groups of ``kind``."""
    groups: dict[int, list[int]] = {}
    for k, p in enumerate(params):
        if p.blur:
            groups.setdefault(kind.group(p.sigma), []).append(k)
    for items in groups.values():
        sigmas = [params[k].sigma for k in items]
        x = on_items(x, items, lambda sub, ids, sigmas=sigmas: kind.run(sub, sigmas))
    return x


def flip_last(x: torch.Tensor, flags: Sequence[bool]) -> torch.Tensor:
    return on_items(x, [k for k, flag in enumerate(flags) if flag], lambda sub, ids: sub.flip(-1))
