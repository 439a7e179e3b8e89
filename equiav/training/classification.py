"""Classification on EquiAV features: labelled items, their augmentations and sampling weights, the loss, and the
evaluation that gathers every rank's predictions. Fine-tuning trains with these; the probe and ``equiav eval
classify`` evaluate with them.

* SpecAugment is really applied to the training audio (one frequency mask and one time mask, set to 0, the dataset
  mean of the normalized filterbank); the authors' was a no-op (reference bug B3).
* Mixup mixes the normalized filterbanks and images of two items of the same batch; the authors mixed waveforms
  before the filterbank.
* Class-balanced sampling weighs each item by the sum of the inverse class frequencies of its labels, or by a file of
  per-item weights (the authors' ``weights.csv``).
* Evaluation scores the predictions of every rank, gathered in dataset order (reference bug B9).
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import ConfigError, DatasetError
from ..image import preprocess_image
from .datasets import BadItem, PretrainDataset, collate_items
from .datasets.items import DECODE_ERRORS, item_failure, randint
from .distributed import DistributedContext, shard
from .metrics import classification_metrics, gather_predictions

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def spec_augment(fbank: torch.Tensor, freqm: int, timem: int, generator: torch.Generator) -> torch.Tensor:
    """One frequency mask of width uniform in [0, freqm] and one time mask of width in [0, timem] on a (T, F)
    filterbank, set to 0; the positions are uniform over the places where the mask fits."""
    frames, bins = fbank.shape
    out = fbank.clone()
    width = randint(generator, 0, min(freqm, bins) + 1)
    start = randint(generator, 0, bins - width + 1)
    out[:, start : start + width] = 0.0
    width = randint(generator, 0, min(timem, frames) + 1)
    start = randint(generator, 0, frames - width + 1)
    out[start : start + width, :] = 0.0
    return out


class LabelledDataset(Dataset):
    """Items ``audio`` (T, F), ``image`` (3, S, S), ``target`` (C,) float and ``index`` from a pretraining dataset.

    The base dataset reads the clip (filterbank, the frame of the split: random in training, the middle one in
    validation) and its labels; this wrapper skips the pretraining augmentations and, in training, rolls the audio in
    time (``data.roll_audio``) and applies SpecAugment, drawing from the item's own generator. Unreadable items come
    back as ``BadItem``.
    """

    def __init__(
        self, base: PretrainDataset, num_classes: int, *, train: bool, masks: tuple[int, int] | None = None
    ) -> None:
        self.base, self.num_classes, self.train = base, num_classes, train
        self.masks = masks if train else None
        self.roll = train and base.data.roll_audio

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def target(self, labels: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        if "labels" in labels:
            return labels["labels"].float()
        label = int(labels["label"])
        if not 0 <= label < self.num_classes:
            raise DatasetError(
                f"item {index} ({self.base.item_path(index)}) has no class label; fine-tuning needs labels "
                "(set data.label_csv for manifests and videos)"
            )
        return F.one_hot(torch.tensor(label), self.num_classes).float()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | BadItem:
        """Item ``index``, a ``BadItem`` if its file is unreadable, or ``DatasetError`` naming the file on any
        other failure."""
        try:
            return self._read(index)
        except Exception as error:
            raise item_failure(self.base.item_path(index), index, self.base.split, error) from error

    def _read(self, index: int) -> dict[str, torch.Tensor] | BadItem:
        generator = self.base.generator(index)
        try:
            decoded = self.base.decode(index, generator)
            image = preprocess_image(decoded.image, self.base.model)
        except DECODE_ERRORS as error:
            return BadItem(index, self.base.item_path(index), str(error))
        fbank = decoded.fbank
        if self.roll:
            fbank = torch.roll(fbank, randint(generator, -fbank.shape[0], fbank.shape[0]), dims=0)
        if self.masks is not None:
            fbank = spec_augment(fbank, *self.masks, generator)
        return {
            "audio": fbank.contiguous(),
            "image": image,
            "target": self.target(decoded.labels, index),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def item_labels(base: PretrainDataset) -> list[list[int]]:
    """Class indices of every item, read from the listing (no decoding), for class-balanced sampling."""
    if hasattr(base, "source"):
        return [[r.digit] for r in base.source.recordings]
    entries = getattr(base, "entries", None)
    if entries is None or base.label_space is None:
        raise ConfigError(
            "balanced_sampling without sample_weights needs AV-digits or labelled manifest/video data"
        )
    return [
        base.label_space.encode(e.labels or "", str(getattr(e, "video_id", i))) for i, e in enumerate(entries)
    ]


def balancing_weights(labels: list[list[int]]) -> torch.Tensor:
    """Per-item weight ``sum over its classes of 1 / class count`` (items without a label get the smallest weight)."""
    counts = Counter(c for item in labels for c in item)
    weights = [sum(1.0 / counts[c] for c in item) for item in labels]
    floor = min((w for w in weights if w > 0), default=1.0)
    return torch.tensor([w if w > 0 else floor for w in weights], dtype=torch.float64)


def read_sample_weights(path: str | Path, count: int) -> torch.Tensor:
    """One non-negative weight per line (the first comma-separated field), ``count`` lines."""
    path = Path(path)
    try:
        lines = [line.split(",")[0].strip() for line in path.read_text().splitlines() if line.strip()]
        weights = torch.tensor([float(v) for v in lines], dtype=torch.float64)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read sample weights, one number per line ({error})") from error
    if weights.numel() != count or (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError(
            f"{path}: expected {count} non-negative weights (one per training item), got {weights.numel()}"
        )
    return weights


def mixup(
    batch: dict[str, torch.Tensor], probability: float, alpha: float, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """Mix each item, with ``probability``, with a random other item of the batch (same lambda for audio, image and
    target)."""
    size = batch["target"].shape[0]
    if probability <= 0 or size < 2:
        return batch
    partner = torch.from_numpy(rng.permutation(size))
    lam = np.where(rng.random(size) < probability, rng.beta(alpha, alpha, size), 1.0)
    out = dict(batch)
    for key in ("audio", "image", "target"):
        x = batch[key]
        weight = torch.from_numpy(lam).to(x).view(-1, *([1] * (x.dim() - 1)))
        out[key] = weight * x + (1 - weight) * x[partner.to(x.device)]
    return out


def classification_loss(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Mean binary cross-entropy (multi-label) or cross-entropy with (soft) target rows (single-label)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target)


@torch.no_grad()
def evaluate_classifier(
    model: torch.nn.Module,
    dataset: LabelledDataset,
    ctx: DistributedContext,
    *,
    multi_label: bool,
    batch_size: int = 64,
    num_workers: int = 0,
    autocast=nullcontext,
    limit: int = 0,
) -> dict[str, float]:
    """Loss and metrics (``classification_metrics``) over every item of ``dataset`` (``limit`` evenly spaced items
    when positive): each rank scores its contiguous share and the logits are gathered in item order before scoring,
    so the numbers equal one process's."""
    total = len(dataset)
    items = [i * total // limit for i in range(limit)] if 0 < limit < total else list(range(total))
    subset = Subset(dataset, [items[i] for i in shard(len(items), ctx.rank, ctx.world_size)])
    loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_items)
    was_training = model.training
    model.eval()
    logits, targets, indices = [], [], []
    for batch in loader:
        for item in batch["bad"]:
            raise DatasetError(f"evaluation item {item.index} ({item.path}) is unreadable: {item.reason}")
        if "index" not in batch:
            continue
        with autocast():
            out = model(audio=batch["audio"].to(ctx.device), image=batch["image"].to(ctx.device))
        logits.append(out.float())
        targets.append(batch["target"].to(ctx.device))
        indices.append(batch["index"].to(ctx.device))
    model.train(was_training)
    num_classes = dataset.num_classes
    local = (
        torch.cat(logits) if logits else torch.zeros(0, num_classes, device=ctx.device),
        torch.cat(targets) if targets else torch.zeros(0, num_classes, device=ctx.device),
        torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64, device=ctx.device),
    )
    all_logits, all_targets, _ = gather_predictions(*local)
    all_logits, all_targets = all_logits.cpu(), all_targets.cpu()
    metrics = classification_metrics(all_logits, all_targets, multi_label)
    metrics["loss"] = classification_loss(all_logits, all_targets, multi_label).item()
    metrics["num_items"] = float(all_logits.shape[0])
    return metrics


def main_metric(multi_label: bool) -> str:
    """The validation number that selects the best checkpoint: mAP (multi-label) or accuracy."""
    return "mAP" if multi_label else "acc"
