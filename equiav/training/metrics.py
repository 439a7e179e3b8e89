"""Classification metrics, and gathering predictions from every rank before scoring them.

* ``average_precision``: per-class AP as scikit-learn's ``average_precision_score`` defines it (the authors' AudioSet
  mAP): the step-wise sum ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, tied scores forming one
  threshold. A class without positive examples has no AP (NaN) and is left out of the mean.
* ``roc_auc``: per-class area under the ROC curve with ties counted as one half (Mann-Whitney U); NaN when a class
  has only positives or only negatives (the authors wrote -1 there and still averaged it).
* ``accuracy``: top-k accuracy of the argmax; targets may be class indices, one-hot or mixed (mixup) rows.

The authors scored each rank's shard on its own in distributed evaluation (reference bug B9). ``gather_predictions``
collects the logits, targets and dataset indices of every rank (shards may differ in size), drops the duplicates a
padded sampler adds, and puts rows back in dataset order, so the numbers equal those of one process.
"""

from __future__ import annotations

import math

import torch

from ..deprecation import moved_names
from ..errors import InvalidInputError
from .distributed import gather_in_order

__getattr__ = moved_names(__name__, {"shard": "equiav.training.distributed"})


def _check_pair(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if scores.dim() != 2 or targets.shape != scores.shape:
        raise InvalidInputError(
            f"scores and targets must both be (N, C), got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if scores.shape[0] == 0:
        raise InvalidInputError("scores must hold at least one row")
    return scores.double(), (targets > 0.5).double()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision (C,) of scores (N, C) against binary targets (N, C); NaN where no positives."""
    scores, targets = _check_pair(scores, targets)
    n = scores.shape[0]
    order = scores.argsort(dim=0, descending=True, stable=True)
    sorted_scores = scores.gather(0, order)
    true_pos = targets.gather(0, order).cumsum(dim=0)
    # A threshold ends where the next (lower) score differs; only those rows define precision/recall points.
    last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_tie[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    predicted = torch.arange(1, n + 1, dtype=torch.float64)[:, None].expand_as(true_pos)
    positives = targets.sum(dim=0)
    out = torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    for c in range(scores.shape[1]):
        if positives[c] == 0:
            continue
        keep = last_of_tie[:, c]
        tp = true_pos[keep, c]
        precision = tp / predicted[keep, c]
        recall = tp / positives[c]
        recall_step = torch.diff(recall, prepend=recall.new_zeros(1))
        out[c] = (recall_step * precision).sum()
    return out


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor with tied values sharing the mean of their ranks."""
    order = values.argsort(stable=True)
    sorted_values = values[order]
    ranks = torch.empty_like(values, dtype=torch.float64)
    start = 0
    n = values.numel()
    boundaries = (torch.nonzero(sorted_values[1:] != sorted_values[:-1]).flatten() + 1).tolist() + [n]
    for end in boundaries:
        ranks[order[start:end]] = (start + 1 + end) / 2.0
        start = end
    return ranks


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class ROC AUC (C,); NaN where a class has no positive or no negative example."""
    scores, targets = _check_pair(scores, targets)
    out = torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    for c in range(scores.shape[1]):
        positive = targets[:, c] > 0.5
        n_pos = int(positive.sum())
        n_neg = positive.numel() - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        rank_sum = _average_ranks(scores[:, c])[positive].sum()
        out[c] = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return out


def _class_indices(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    if targets.dim() == 1:
        if targets.is_floating_point():
            raise InvalidInputError("1-D targets must be integer class indices")
        return targets.long()
    if targets.dim() != 2 or targets.shape[1] != num_classes:
        raise InvalidInputError(
            f"targets must be (N,) indices or (N, {num_classes}) rows, got {tuple(targets.shape)}"
        )
    return targets.argmax(dim=1)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Percentage of rows whose target class is among the ``k`` highest logits (targets: indices or rows)."""
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise InvalidInputError(f"logits must be a non-empty (N, C) tensor, got {tuple(logits.shape)}")
    labels = _class_indices(targets, logits.shape[1])
    if labels.shape[0] != logits.shape[0]:
        raise InvalidInputError(f"got {logits.shape[0]} logit rows but {labels.shape[0]} targets")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return 100.0 * (top == labels[:, None]).any(dim=1).double().mean().item()


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return finite.mean().item() if finite.numel() else math.nan


def d_prime(auc: float) -> float:
    """Sensitivity index sqrt(2) * Phi^-1(AUC), as AudioSet papers report next to mAP."""
    if math.isnan(auc) or not 0.0 < auc < 1.0:
        return math.nan
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    return math.sqrt(2.0) * normal.icdf(torch.tensor(auc, dtype=torch.float64)).item()


def classification_metrics(
    logits: torch.Tensor, targets: torch.Tensor, multi_label: bool
) -> dict[str, float]:
    """Multi-label: ``mAP``, ``mAUC``, ``d_prime`` (in percent except d'), plus ``acc``; single-label: ``acc``,
    ``acc_top5`` and ``mAP``. Targets are indices (N,) or (N, C) rows."""
    num_classes = logits.shape[1]
    if targets.dim() == 1:
        rows = torch.zeros_like(logits, dtype=torch.float64)
        rows[torch.arange(targets.shape[0]), _class_indices(targets, num_classes)] = 1.0
    else:
        rows = targets
    ap = average_precision(logits, rows)
    metrics = {"mAP": 100.0 * _nanmean(ap), "acc": accuracy(logits, targets)}
    if multi_label:
        mauc = _nanmean(roc_auc(logits, rows))
        metrics.update(mAUC=100.0 * mauc, d_prime=d_prime(mauc))
    else:
        metrics["acc_top5"] = accuracy(logits, targets, k=5)
    return metrics


def gather_predictions(
    logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's (logits, targets, dataset indices), in dataset order, each dataset item once."""
    indices, logits, targets = gather_in_order(indices, logits, targets)
    return logits, targets, indices


__all__ = [
    "accuracy",
    "average_precision",
    "classification_metrics",
    "d_prime",
    "gather_predictions",
    "roc_auc",
]
