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
   a stratified 20 % of the training rows (seeded) serves as one; on AV-digits one training speaker is held out
   instead (``--val-speaker``, default the last in alphabetical order), so no voice is in two splits.
5. The chosen ``l2`` is refit on training + validation rows and scored once on the test rows.

Command line: ``python -m equiav.training.probe --model NAME_OR_PATH --avdigits ROOT --modality audio|visual|both``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..checks import all_finite
from ..console import add_runtime_arguments, model_width, run_main, set_threads
from ..errors import InvalidInputError
from .classification import DIGIT_NAMES, LabelledDataset
from .datasets import DataConfig, build_dataset, collate_items
from .distributed import resolve_device
from .loading import load_backbone
from .metrics import classification_metrics

MODALITIES = ("audio", "visual", "both")
FEATURE_KINDS = ("tokens", "inter")
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
    if not all_finite(x):
        raise InvalidInputError(f"{name} features contain NaN or infinite values")
    rows_ok = y.dim() == 2 if multi_label else (y.dim() == 1 and not y.is_floating_point())
    if not rows_ok or y.shape[0] != x.shape[0]:
        expected = "(N, C) binary rows" if multi_label else "(N,) integer class indices"
        raise InvalidInputError(
            f"{name} labels must be {expected} for {x.shape[0]} rows, got {tuple(y.shape)}"
        )


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
        torch.cat([fit_x, val_x]),
        torch.cat([fit_y, val_y]),
        best,
        num_classes=num_classes,
        multi_label=multi_label,
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


# --------------------------------------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset: Any,
    modality: str,
    kind: str = "tokens",
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (N, D) and target rows (N, C) of a ``LabelledDataset`` (no augmentation).

    ``kind="tokens"``: mean of the final-normed patch tokens; ``"inter"``: the inter-modal embedding (L2-normalized).
    ``modality`` ``both`` concatenates the audio and the visual features.
    """
    if modality not in MODALITIES or kind not in FEATURE_KINDS:
        raise InvalidInputError(f"modality must be one of {MODALITIES} and kind one of {FEATURE_KINDS}")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_items)
    model.eval()
    features, targets = [], []
    for batch in loader:
        for item in batch["bad"]:
            raise InvalidInputError(f"item {item.index} ({item.path}) is unreadable: {item.reason}")
        parts = []
        if modality in ("audio", "both"):
            parts.append(_features(model, batch["audio"].to(device), "audio", kind))
        if modality in ("visual", "both"):
            parts.append(_features(model, batch["image"].to(device), "visual", kind))
        features.append(torch.cat(parts, dim=1).double().cpu())
        targets.append(batch["target"])
    return torch.cat(features), torch.cat(targets)


def _features(model: torch.nn.Module, x: torch.Tensor, modality: str, kind: str) -> torch.Tensor:
    if kind == "tokens":
        tokens = model.audio_tokens(x) if modality == "audio" else model.image_tokens(x)
        return tokens.mean(dim=1).float()
    embedding = model.encode_audio(x) if modality == "audio" else model.encode_image(x)
    return F.normalize(embedding.float(), dim=-1)


def _labels(targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return targets if multi_label else targets.argmax(dim=1)


# --------------------------------------------------------------------------------------------------- command


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``equiav eval probe`` / ``python -m equiav.training.probe``."""
    parser.add_argument(
        "--model", required=True, help="registered name, directory, hub repo id or authors' .pth"
    )
    parser.add_argument(
        "--preset", default=None, help="preset for the sizes an authors' checkpoint cannot tell"
    )
    parser.add_argument("--random-init", action="store_true", help="randomly initialized preset (reference)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of --random-init and of the validation split"
    )
    parser.add_argument("--modality", default="audio", choices=MODALITIES)
    parser.add_argument(
        "--features", default="tokens", choices=FEATURE_KINDS, help="mean tokens or inter embedding"
    )
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--avdigits", help="AV-digits root: train speakers -> train, held-out speakers -> test")
    data.add_argument("--train-manifest", help="training manifest (with --test-manifest and --label-csv)")
    parser.add_argument(
        "--val-speaker", default=None, help="AV-digits training speaker held out to choose l2"
    )
    parser.add_argument("--test-manifest", default=None)
    parser.add_argument(
        "--val-manifest", default=None, help="default: a stratified 20%% of the training rows"
    )
    parser.add_argument("--label-csv", default=None)
    parser.add_argument("--task", default="single_label", choices=["single_label", "multi_label"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the result as JSON")
    add_runtime_arguments(parser)


def _probe_sets(args: argparse.Namespace, config) -> dict[str, Any]:
    """(LabelledDataset, rows or None) of the train, test and (when there is one) val splits."""
    if args.avdigits:
        data = DataConfig(kind="avdigits", path=args.avdigits)
        train_base = build_dataset(data, config, "train")
        speakers = [r.speaker for r in train_base.source.recordings]
        held = args.val_speaker or sorted(set(speakers))[-1]
        if held not in speakers:
            raise InvalidInputError(
                f"--val-speaker {held!r} is not a training speaker ({sorted(set(speakers))})"
            )
        train = LabelledDataset(train_base, len(DIGIT_NAMES), train=False)
        rows = torch.tensor([s != held for s in speakers])
        sets = {
            "train": (train, rows.nonzero().flatten().tolist()),
            "val": (train, (~rows).nonzero().flatten().tolist()),
            "test": (
                LabelledDataset(build_dataset(data, config, "val"), len(DIGIT_NAMES), train=False),
                None,
            ),
        }
        return sets
    if not (args.test_manifest and args.label_csv):
        raise InvalidInputError("--train-manifest needs --test-manifest and --label-csv")
    sets = {}
    for split, manifest in (
        ("train", args.train_manifest),
        ("val", args.val_manifest),
        ("test", args.test_manifest),
    ):
        if manifest:
            data = DataConfig(kind="manifest", path=manifest, val_path=manifest, label_csv=args.label_csv)
            base = build_dataset(data, config, "val")
            sets[split] = (LabelledDataset(base, base.label_space.num_classes, train=False), None)
    return sets


def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Extract features of every split, run ``linear_probe``, print and save the result."""
    device = resolve_device(args.device)
    model = load_backbone(args.model, random_init=args.random_init, seed=args.seed, preset=args.preset).to(
        device
    )
    sets = _probe_sets(args, model.config)
    multi_label = args.task == "multi_label"
    extracted = {}
    for split, (dataset, rows) in sets.items():
        subset = dataset if rows is None else Subset(dataset, rows)
        x, targets = extract_features(
            model, subset, args.modality, args.features, batch_size=args.batch_size, num_workers=args.num_workers,
            device=device,
        )  # fmt: skip
        extracted[split] = (x, _labels(targets, multi_label))
    val_x, val_y = extracted.get("val", (None, None))
    result = linear_probe(
        *extracted["train"], *extracted["test"], val_x, val_y, multi_label=multi_label, seed=args.seed
    )
    result = {
        "model": args.model, "random_init": args.random_init, "modality": args.modality, "features": args.features,
        "grid": list(DEFAULT_L2_GRID), **result,
    }  # fmt: skip
    metric = "mAP" if multi_label else "acc"
    print(
        f"linear probe ({args.modality}, {args.features}): l2 {result['l2']:g}, test {metric} "
        f"{result['test'][metric]:.2f} ({result['num_train']} train / {result['num_val']} val / "
        f"{result['num_test']} test rows)"
    )
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")
    return result


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m equiav.training.probe``."""
    parser = argparse.ArgumentParser(
        prog="python -m equiav.training.probe", description=__doc__.split("\n\n")[0]
    )
    add_probe_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    set_threads(args.threads, model_width(args.model))
    run_probe(args)


if __name__ == "__main__":
    run_main(main, "python -m equiav.training.probe")
