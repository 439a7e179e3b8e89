"""Cheap input checks shared by the front-ends and the model."""

from __future__ import annotations

import torch


def all_finite(x: torch.Tensor) -> bool:
    """Whether a floating-point tensor holds no NaN and no infinity.

    One min/max reduction, whose results are NaN if any value is NaN and infinite if any value is: 5-20x faster on
    a CPU than ``torch.isfinite(x).all()``, which writes a boolean tensor the size of ``x`` first and is
    a measurable share of a batch-1 forward pass.
    """
    if x.numel() == 0:
        return True
    return bool(torch.isfinite(torch.stack(torch.aminmax(x))).all())
