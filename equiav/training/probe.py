"""Linear probe: a regularized logistic regression on frozen features, with a fixed, reported protocol.

Protocol (``linear_probe``):

1. Features: the mean of the final-normed patch tokens of each tower (D values per modality; ``both`` concatenates
   audio and visual). These are the towers' own representation, what fine-tuning builds on; the inter embeddings
   (``--features inter``) come out of a projection head trained only to align the two modalities, which discards
   information a classifier could use, as projection heads are known to do in contrastive learning.
2. Standardization: each feature dimension is centred and scaled with the mean and standard deviation of the
   training rows.
3. Model: multinomial logistic regression (softmax cross-entropy; per-class sigmoid cross-entropy for multi-label
   data) with a bias, minimizing ``mean loss + (l2 / 2) * ||W||^2`` (bias not penalized), in float64 with full-batch
   L-BFGS and a strong-Wolfe line search until the largest gradient entry is below 1e-7 or 500 iterations.
4. Regularization: ``l2`` from the fixed grid ``DEFAULT_L2_GRID`` = 1e-6, 1e-5, ..., 1e1 (8 values), chosen by the
   validation score (accuracy, or mAP for multi-label; the larger ``l2`` wins a tie). Without a validation split,
   a stratified 20 % of the training rows (seeded) serves as one.
5. The chosen ``l2`` is refit on training + validation rows and scored once on the test rows.

Command line: ``python -m equiav.training.probe --model NAME_OR_PATH --avdigits ROOT --modality audio|visual|both``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from .metrics import classification_metrics

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
MAX_ITERATIONS = 500
GRAD_TOLERANCE = 1e-7


@dataclass
class LinearProbe:
    """A fitted probe: ``logits(x) = standardize(x) @ weight.T + bias``."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    l2: float
    multi_label: bool

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.mean.shape[0]:
            raise InvalidInputError(f"features must be (N, {self.mean.shape[0]}), got {tuple(x.shape)}")
        return self.standardize(x) @ self.weight.T + self.bias


def _check_features(x: torch.Tensor, y: torch.Tensor, multi_label: bool, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
        raise InvalidInputError(f"{name} features must be a non-empty (N, D) tensor")
    if not torch.isfinite(x).all():
        raise InvalidInputError(f"{name} features contain NaN or infinite values")
    rows_ok = y.dim() == 2 if multi_label else (y.dim() == 1 and not y.is_floating_point())
    if not rows_ok or y.shape[0] != x.shape[0]:
        expected = "(N, C) binary rows" if multi_label else "(N,) integer class indices"
        raise InvalidInputError(f"{name} labels must be {expected} for {x.shape[0]} rows, got {tuple(y.shape)}")


def probe_objective(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, l2: float, multi_label: bool
) -> torch.Tensor:
    """``mean loss + (l2 / 2) ||W||^2`` on standardized features ``x``."""
    logits = x @ weight.T + bias
    if multi_label:
        loss = F.binary_cross_entropy_with_logits(logits, y.double(), reduction="sum") / x.shape[0]
    else:
        loss = F.cross_entropy(logits, y)
    return loss + 0.5 * l2 * weight.pow(2).sum()


def standardization(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation (constant dimensions get 1, so they stay 0 after centring)."""
    x = x.double()
    std = x.std(dim=0, unbiased=False)
    return x.mean(dim=0), torch.where(std > 1e-12, std, torch.ones_like(std))


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    l2: float,
    *,
    num_classes: int | None = None,
    multi_label: bool = False,
    max_iterations: int = MAX_ITERATIONS,
) -> LinearProbe:
    """Fit the probe of step 3 of the module protocol (standardization included) and return it."""
    _check_features(x, y, multi_label, "training")
    if not (isinstance(l2, (int, float)) and l2 >= 0 and math.isfinite(l2)):
        raise InvalidInputError(f"l2 must be a finite non-negative number, got {l2!r}")
    mean, std = standardization(x)
    z = (x.double() - mean) / std
    classes = y.shape[1] if multi_label else int(num_classes or int(y.max()) + 1)
    weight = torch.zeros(classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iterations,
        tolerance_grad=GRAD_TOLERANCE,
        tolerance_change=0.0,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = probe_objective(weight, bias, z, y, l2, multi_label)
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, std, float(l2), multi_label)


def probe_score(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy (single-label) or mAP (multi-label), in percent."""
    metrics = classification_metrics(probe.logits(x), y, probe.multi_label)
    return metrics["mAP"] if probe.multi_label else metrics["acc"]


def stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) row indices: ``fraction`` of each class (at least one row when a class has two or more)."""
    generator = torch.Generator().manual_seed(seed)
    classes = y.argmax(dim=1) if y.dim() == 2 else y
    kept, held = [], []
    for c in classes.unique().tolist():
        rows = (classes == c).nonzero().flatten()
        rows = rows[torch.randperm(rows.numel(), generator=generator)]
        count = max(1, round(fraction * rows.numel())) if rows.numel() > 1 else 0
        held.append(rows[:count])
        kept.append(rows[count:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    *,
    grid: Sequence[float] = DEFAULT_L2_GRID,
    multi_label: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the whole protocol of the module docstring; returns the chosen ``l2``, the validation score of every grid
    value, and the ``test`` metrics (``classification_metrics``) of the refit probe."""
    if not grid:
        raise InvalidInputError("grid must hold at least one l2 value")
    _check_features(test_x, test_y, multi_label, "test")
    num_classes = None if multi_label else int(max(train_y.max(), test_y.max())) + 1
    if val_x is None or val_y is None:
        kept, held = stratified_split(train_y, val_fraction, seed)
        fit_x, fit_y, val_x, val_y = train_x[kept], train_y[kept], train_x[held], train_y[held]
    else:
        fit_x, fit_y = train_x, train_y
    _check_features(val_x, val_y, multi_label, "validation")
    if not multi_label:
        num_classes = max(num_classes, int(val_y.max()) + 1)
    scores = {}
    for l2 in sorted(grid):
        probe = fit_logistic(fit_x, fit_y, l2, num_classes=num_classes, multi_label=multi_label)
        scores[l2] = probe_score(probe, val_x, val_y)
    best = max(sorted(scores), key=lambda value: (scores[value], value))
    final = fit_logistic(
        torch.cat([fit_x, val_x]), torch.cat([fit_y, val_y]), best, num_classes=num_classes, multi_label=multi_label
    )
    test = classification_metrics(final.logits(test_x), test_y, multi_label)
    return {
        "l2": best,
        "val_scores": {f"{k:g}": v for k, v in scores.items()},
        "test": test,
        "num_train": int(fit_x.shape[0]),
        "num_val": int(val_x.shape[0]),
        "num_test": int(test_x.shape[0]),
    }
