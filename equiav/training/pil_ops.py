"""Pillow's image filters emulated in float, for the authors' visual pipeline (``faithful=True``).

The authors blurred frames with Pillow's ``GaussianBlur(radius=sigma)``: three passes of an extended box filter with
edge replication (Gwosdek et al. 2011), a wider blur than torchvision's for the same sigma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .augment_ops import BlurFilter, filter_axis

BOX_PASSES = 3


def pil_box_kernels(sigmas: Sequence[float], device: torch.device) -> torch.Tensor:
    """(N, taps) rows of Pillow's extended box filter, three passes of which approximate a Gaussian of std sigma.

    A box of radius l + a (l whole) averages 2l + 1 pixels with weight 1 and the next pixel on each side with weight
    a, normalized by 2 (l + a) + 1; rows of one call share l (``PIL_BLUR`` groups them).
    """
    radii = [pil_box_radius(s) for s in sigmas]
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


def pil_box_radius(sigma: float, passes: int = BOX_PASSES) -> float:
    """Box radius l + a of Pillow's Gaussian blur (Gwosdek et al. 2011, extended box of variance sigma^2 / passes)."""
    variance = sigma * sigma / passes
    whole = math.floor((math.sqrt(12.0 * variance + 1.0) - 1.0) / 2.0)
    frac = (2 * whole + 1) * (whole * (whole + 1) - 3 * variance) / (6 * (variance - (whole + 1) ** 2))
    return whole + frac


def pil_box_blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Pillow's Gaussian blur of each item: three box passes along each axis, edges replicated."""
    rows = pil_box_kernels(sigmas, x.device)
    for dim in (-1, -2):
        for _ in range(BOX_PASSES):
            x = filter_axis(x, rows, dim, "replicate")
    return x


PIL_BLUR = BlurFilter(group=lambda sigma: math.floor(pil_box_radius(sigma)), run=pil_box_blur)
