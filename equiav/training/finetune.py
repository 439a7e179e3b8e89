"""Fine-tuning: ``python -m equiav.training.finetune --recipe NAME --data.kind KIND --data.path PATH [...]``.

Builds an :class:`~equiav.classifier.EquiAVClassifier` (audio, visual or audio-visual; linear or mlp head) on the
towers of a pretrained model (``--backbone``; without one the ``--model`` preset starts from random weights) and
trains it with the pretraining run's machinery: the same launcher (alone or under ``torchrun``), config system (JSON
file + ``--option`` overrides, booleans as ``--flag`` / ``--no-flag``), sampler, checkpoints with exact resume,
``metrics.jsonl`` / TensorBoard logging and learning-rate schedule.

What differs from the authors' fine-tuning (reference section 5 and bugs):

* SpecAugment is really applied to the training audio (one frequency mask of up to ``freqm`` bins and one time mask
  of up to ``timem`` frames, set to 0, the dataset mean of the normalized filterbank); theirs was a no-op (B3).
* The head's learning-rate multiplier holds at every step: each parameter group carries an ``lr_scale`` that the
  schedule applies (B8); theirs was overwritten by the scheduler, so the head trained at the base rate.
* Validation metrics are computed on the predictions of every rank, gathered in dataset order (B9).
* Every mode works with every head (B7, see ``equiav.classifier``); boolean options can be switched off (B15).
* Mixup mixes the normalized filterbanks and images of two items of the same batch (probability ``mixup``,
  lambda ~ Beta(``mixup_alpha``, ``mixup_alpha``)); the authors mixed waveforms before the filterbank.

Losses and metrics: ``task=multi_label`` uses binary cross-entropy and reports mAP (AudioSet style);
``task=single_label`` uses cross-entropy (with mixed soft targets) and reports accuracy (VGGSound, ESC-50, Speech
Commands style). ``balanced_sampling`` draws training items with probability proportional to the sum of the inverse
class frequencies of their labels, or to the weights of ``sample_weights`` (a file with one number per training item,
the authors' ``weights.csv``).

Output folder: ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``best/`` (the classifier with the best
validation score) and ``final/``, both loadable with ``EquiAVClassifier.from_pretrained``.

Named recipes (``--recipe``, see ``RECIPES``) hold the paper's Table A settings; the order of precedence is
defaults < recipe < ``--config`` file < command-line options.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from ..classifier import EquiAVClassifier, load_label_names
from ..config import EquiAVConfig
from ..errors import ConfigError, DatasetError, EquiAVError
from ..image import preprocess_image
from .checkpoint import load_checkpoint, save_checkpoint
from .data import (
    BadItem,
    BadItemTracker,
    DataConfig,
    PretrainDataset,
    build_pretrain_dataset,
    collate_pretrain,
)
from .datasets.items import DECODE_ERRORS, item_failure, randint
from .launch import (
    DistributedContext,
    barrier,
    checkpoint_to_resume,
    seed_everything,
    set_deterministic,
    setup_distributed,
    teardown_distributed,
)
from .logger import TrainingLogger
from .loop import Position, ShardSampler, TrainingState, autocast_context
from .metrics import classification_metrics, gather_predictions, shard
from .options import add_options, check_minimums, check_run_length, config_from_layers, read_config_file
from .pretrain import OptimConfig
from .schedule import WarmupCosineSchedule

log = logging.getLogger("equiav.finetune")

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# SpecAugment widths of the authors' fine-tuning (ft_freqm 48, ft_timem 192) for 128 mel bins x 1024 frames.
REFERENCE_FREQM, REFERENCE_TIMEM = 48, 192
REFERENCE_BINS, REFERENCE_FRAMES = 128, 1024

# --------------------------------------------------------------------------------------------------- configuration


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """Optimizer and learning-rate schedule of fine-tuning (Table A: AdamW, betas 0.9 / 0.95, weight decay 1e-5,
    half-cycle cosine from 1e-6 through the peak).

    * ``lr``: peak learning rate of the backbone.
    * ``head_lr_scale``: the classification head trains at ``head_lr_scale`` times the backbone's rate, at every
      step (authors' option ``head_lr`` 50, which their scheduler silently cancelled, bug B8).
    * ``start_lr``: learning rate of the first warmup step (Table A 1e-6).
    * ``final_lr``: floor of the cosine decay.
    * ``betas``: AdamW betas.
    * ``weight_decay``: AdamW weight decay, applied to every parameter as the authors did.
    * ``eps``: AdamW epsilon.
    * ``warmup_steps``: linear warmup length in optimizer steps; when set it overrides ``warmup_epochs``.
    * ``warmup_epochs``: warmup length in epochs (may be fractional).
    * ``clip_grad_norm``: clip the global gradient norm to this value; 0 disables clipping (the authors' fine-tuning).
    * ``grad_accum``: micro-batches whose gradients are summed into one optimizer step.
    """

    start_lr: float = 1e-6
    clip_grad_norm: float = 0.0
    warmup_epochs: float = 1.0
    head_lr_scale: float = 50.0


# Smallest allowed value of each integer option (None, where allowed, means "not set").
_MINIMUMS = {
    "batch_size": 1,
    "eval_batch_size": 1,
    "head_hidden_dim": 1,
    "max_steps": 1,
    "checkpoint_every_steps": 1,
    "keep_last": 1,
    "log_every": 1,
    "num_workers": 0,
    "val_every": 0,
    "max_val_items": 0,
    "optim.grad_accum": 1,
    "optim.warmup_steps": 0,
}


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs; the JSON config file holds these fields (nested as objects).

    * ``data``: the labelled data (``DataConfig``): ``avdigits`` (labels are the digits), or ``manifest`` / ``videos``
      with ``label_csv``; ``data.val_path`` is the evaluation split (AV-digits splits by speaker).
    * ``backbone``: pretrained ``EquiAVModel`` whose towers start the classifier (registered name, directory, hub id
      or authors' pretraining ``.pth``); unset: the ``model`` preset with random weights.
    * ``init_classifier``: start from this classifier instead (a fine-tuned directory or an authors' fine-tuning
      ``.pth``); ``mode``, ``head`` and the classes then come from it.
    * ``model``: preset of a random backbone, and base config for the sizes an authors' checkpoint cannot tell.
    * ``model_overrides``: JSON object of ``EquiAVConfig`` fields to replace (e.g. ``audio_mean``, ``audio_std``:
      the input normalization of Table A, ``num_heads`` for authors' checkpoints).
    * ``mode``: ``audio_visual`` (concatenated features, the paper's A-V), ``audio`` or ``visual``.
    * ``head``: ``linear`` (the paper) or ``mlp`` (Linear, BatchNorm, ReLU, Linear).
    * ``head_hidden_dim``: hidden size of the mlp head.
    * ``drop_path``: stochastic depth of every transformer block while training (authors 0.1).
    * ``task``: ``multi_label`` (BCE, mAP) or ``single_label`` (cross-entropy, accuracy).
    * ``label_names``: label file (CSV with ``display_name`` or one name per line) naming the classes of the export.
    * ``freeze_backbone``: train the head only (the towers and projections stay fixed).
    * ``optim``: optimizer and schedule.
    * ``batch_size``: items per micro-batch on each process.
    * ``global_batch_size``: when set, ``batch_size`` becomes this divided by processes x ``optim.grad_accum``.
    * ``max_steps``: optimizer steps to train; when set it overrides ``epochs``.
    * ``epochs``: training length in epochs (may be fractional).
    * ``mixup``: probability that an item is mixed with another item of its batch (authors 0.5; 0 disables).
    * ``mixup_alpha``: lambda ~ Beta(alpha, alpha) (authors 10).
    * ``spec_augment``: apply SpecAugment to the training audio.
    * ``freqm``: maximum frequency-mask width in bins (unset: 48 per 128 bins, scaled to the input).
    * ``timem``: maximum time-mask width in frames (unset: 192 per 1024 frames, scaled to the input).
    * ``balanced_sampling``: draw training items with class-balancing weights (with replacement).
    * ``sample_weights``: file of per-item sampling weights for ``balanced_sampling`` (default: computed from labels).
    * ``precision``: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast with a gradient scaler, CUDA).
    * ``grad_checkpointing``: recompute transformer blocks in the backward pass.
    * ``output_dir``: folder of the run.
    * ``checkpoint_every_steps``: save a checkpoint every this many optimizer steps (and at the end).
    * ``keep_last``: number of checkpoints to keep.
    * ``resume``: ``auto``, ``none`` or a checkpoint path (as pretraining).
    * ``seed``: seed of the initialization, sampling order, mixup and drop path.
    * ``deterministic``: use deterministic kernels only.
    * ``device``: ``auto``, ``cpu`` or ``cuda``.
    * ``num_workers``: data-loader worker processes per training process.
    * ``eval_batch_size``: items per evaluation batch on each process.
    * ``max_val_items``: evaluate on this many evenly spaced validation items only (0: all; for quick runs).
    * ``log_every``: log training metrics every this many optimizer steps.
    * ``val_every``: evaluate every this many optimizer steps (0: at the end of every epoch, and at the end).
    * ``tensorboard``: also write TensorBoard event files.
    * ``progress``: show a progress bar (rank 0).
    """

    data: DataConfig
    backbone: str | None = None
    init_classifier: str | None = None
    model: str = "equiav-tiny-digits"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    mode: Literal["audio_visual", "audio", "visual"] = "audio_visual"
    head: Literal["linear", "mlp"] = "linear"
    head_hidden_dim: int = 512
    drop_path: float = 0.1
    task: Literal["multi_label", "single_label"] = "single_label"
    label_names: str | None = None
    freeze_backbone: bool = False
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    batch_size: int = 32
    global_batch_size: int | None = None
    max_steps: int | None = None
    epochs: float = 10.0
    mixup: float = 0.0
    mixup_alpha: float = 10.0
    spec_augment: bool = True
    freqm: int | None = None
    timem: int | None = None
    balanced_sampling: bool = False
    sample_weights: str | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_checkpointing: bool = False
    output_dir: str = "runs/finetune"
    checkpoint_every_steps: int = 1000
    keep_last: int = 2
    resume: str = "auto"
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 4
    eval_batch_size: int = 64
    max_val_items: int = 0
    log_every: int = 10
    val_every: int = 0
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_minimums(self, _MINIMUMS)
        check_run_length(self.max_steps, self.epochs)
        if not 0.0 <= self.mixup <= 1.0 or self.mixup_alpha <= 0:
            raise ConfigError(
                f"--mixup must be in [0, 1] and --mixup-alpha positive, got {self.mixup}, {self.mixup_alpha}"
            )
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"option --drop-path must be in [0, 1), got {self.drop_path}")
        if self.optim.head_lr_scale <= 0:
            raise ConfigError(
                f"option --optim.head-lr-scale must be positive, got {self.optim.head_lr_scale}"
            )
        for name in ("freqm", "timem"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"option --{name} must be non-negative, got {value}")
        if self.data.kind == "shards":
            raise ConfigError("fine-tuning reads map-style data: use data.kind avdigits, manifest or videos")
        if self.backbone and self.init_classifier:
            raise ConfigError("give --backbone or --init-classifier, not both")

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"

    def model_config(self) -> EquiAVConfig:
        """The preset with ``model_overrides`` applied (the random backbone, or the base of an authors' file)."""
        return EquiAVConfig.from_preset(self.model, **self.model_overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Table A of the paper (fine-tuning columns) plus the authors' defaults where the table is silent (mixup probability
# 0.5, Beta(10, 10), SpecAugment 48 / 192, head learning-rate multiplier 50). Batch sizes are global.
_TABLE_A = dict(
    optim=dict(start_lr=1e-6, final_lr=1e-6, weight_decay=1e-5, betas=[0.9, 0.95], head_lr_scale=50.0)
)
RECIPES: dict[str, dict[str, Any]] = {
    "audioset-20k": dict(
        _TABLE_A, task="multi_label", global_batch_size=256, epochs=50, mixup=0.5, balanced_sampling=False,
        model_overrides=dict(audio_mean=-4.346, audio_std=4.332),
        optim=dict(_TABLE_A["optim"], lr=1e-4, warmup_epochs=1),
    ),
    "audioset-2m": dict(
        _TABLE_A, task="multi_label", global_batch_size=512, epochs=50, mixup=0.5, balanced_sampling=True,
        model_overrides=dict(audio_mean=-4.346, audio_std=4.332),
        optim=dict(_TABLE_A["optim"], lr=1e-4, warmup_epochs=1),
    ),
    "vggsound": dict(
        _TABLE_A, task="single_label", global_batch_size=256, epochs=50, mixup=0.5, balanced_sampling=True,
        model_overrides=dict(audio_mean=-4.956, audio_std=4.486),
        optim=dict(_TABLE_A["optim"], lr=1e-4, warmup_epochs=1),
    ),
    "esc50": dict(
        _TABLE_A, task="single_label", mode="audio", global_batch_size=64, epochs=60, mixup=0.0,
        balanced_sampling=False, model_overrides=dict(audio_mean=-6.627, audio_std=5.359),
        optim=dict(_TABLE_A["optim"], lr=5e-4, warmup_epochs=4),
    ),
    "speechcommands-v1": dict(
        _TABLE_A, task="multi_label", mode="audio", global_batch_size=256, epochs=10, mixup=0.5,
        balanced_sampling=False, model_overrides=dict(audio_mean=-6.702, audio_std=5.448),
        optim=dict(_TABLE_A["optim"], lr=1e-3, warmup_epochs=1),
    ),
    # CPU-sized: the tiny digits preset on AV-digits (10 digits, single label).
    "avdigits-tiny": dict(
        model="equiav-tiny-digits", task="single_label", batch_size=32, epochs=5, mixup=0.0, num_workers=2,
        optim=dict(lr=1e-3, start_lr=1e-5, final_lr=1e-5, head_lr_scale=10.0, warmup_epochs=0.5),
    ),
}  # fmt: skip


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m equiav.training.finetune",
        description="Fine-tune an EquiAV classifier. Precedence: defaults < --recipe < --config < options.",
    )
    parser.add_argument(
        "--recipe", choices=list_recipes(), default=None, help="named hyperparameters (Table A)"
    )
    parser.add_argument(
        "--config", metavar="PATH", help="JSON file with FinetuneConfig fields (nested objects)"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_options(parser, FinetuneConfig)
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[FinetuneConfig, argparse.Namespace]:
    """Parse the command line: defaults < recipe < ``--config`` file < options given on the command line."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = dict(RECIPES[args.recipe]) if args.recipe else {}
    if args.config:
        values = _merge(values, read_config_file(args.config))
    return config_from_layers(FinetuneConfig, values, args, skip=("recipe", "config", "print_config")), args


# --------------------------------------------------------------------------------------------------- data


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


def mask_widths(cfg: FinetuneConfig, model: EquiAVConfig) -> tuple[int, int]:
    """(freqm, timem): the configured values, or the authors' 48 / 192 scaled to this input size."""
    freqm = (
        cfg.freqm if cfg.freqm is not None else round(REFERENCE_FREQM * model.num_mel_bins / REFERENCE_BINS)
    )
    timem = (
        cfg.timem
        if cfg.timem is not None
        else round(REFERENCE_TIMEM * model.target_length / REFERENCE_FRAMES)
    )
    return freqm, timem


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


def class_info(base: PretrainDataset, cfg: FinetuneConfig) -> tuple[int, list[str]]:
    """(number of classes, class names) of the data: digits for AV-digits, the label CSV otherwise; a
    ``label_names`` file overrides the names."""
    if base.label_space is not None:
        count, names = base.label_space.num_classes, list(base.label_space.names)
    elif cfg.data.kind == "avdigits":
        count, names = len(DIGIT_NAMES), list(DIGIT_NAMES)
    else:
        raise ConfigError(f"data.kind {cfg.data.kind!r} needs data.label_csv to fine-tune (the class list)")
    if cfg.label_names:
        names = load_label_names(cfg.label_names)
        if len(names) != count:
            raise ConfigError(f"{cfg.label_names}: {len(names)} names for {count} classes")
    return count, names


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


class WeightedShardSampler(ShardSampler):
    """``ShardSampler`` drawing each epoch's items with replacement, with probability proportional to ``weights``."""

    def __init__(self, weights: torch.Tensor, **kwargs: Any) -> None:
        super().__init__(weights.numel(), **kwargs)
        self.weights = weights

    def indices(self) -> list[int]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, 1]).generate_state(1)[0])
        count = self.batches * self.batch_size * self.world_size
        drawn = torch.multinomial(
            self.weights, count, replacement=True, generator=torch.Generator().manual_seed(seed)
        )
        return drawn.tolist()[self.rank :: self.world_size][self.start_batch * self.batch_size :]


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


# --------------------------------------------------------------------------------------------------- evaluation


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
    loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_pretrain)
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


# --------------------------------------------------------------------------------------------------- training


PREPROCESSING_FIELDS = (
    "audio_mean",
    "audio_std",
    "audio_normalization",
    "image_mean",
    "image_std",
    "image_interpolation",
    "image_resize",
)


def build_classifier(cfg: FinetuneConfig, num_classes: int, names: list[str]) -> EquiAVClassifier:
    """The classifier at the start of training: from ``init_classifier``, a pretrained backbone, or a random one.

    An authors' checkpoint file takes its unknown sizes from ``model`` + ``model_overrides``; a saved directory
    keeps its own config, except for the input normalization fields of ``model_overrides`` (Table A's statistics).
    """
    from ..model import EquiAVModel

    source = cfg.init_classifier or cfg.backbone
    is_file = source is not None and Path(source).is_file()
    if cfg.init_classifier:
        mode = {"mode": cfg.mode} if is_file else {}
        model = EquiAVClassifier.from_pretrained(source, config=cfg.model_config(), **mode)
        if model.config.num_classes != num_classes:
            raise ConfigError(f"{source}: has {model.config.num_classes} classes, the data has {num_classes}")
        model.config.multi_label = cfg.multi_label
        model.config.backbone = _with_preprocessing(model.config.backbone, cfg)
        model.set_label_names(names)
        return model
    if cfg.backbone:
        backbone = EquiAVModel.from_pretrained(source, **({"config": cfg.model_config()} if is_file else {}))
        backbone.config = _with_preprocessing(backbone.config, cfg)
    else:
        backbone = EquiAVModel(cfg.model_config())
    settings = dict(
        num_classes=num_classes, mode=cfg.mode, head=cfg.head, head_hidden_dim=cfg.head_hidden_dim,
        drop_path=cfg.drop_path, multi_label=cfg.multi_label, label_names=names,
    )  # fmt: skip
    return EquiAVClassifier.from_backbone(backbone, **settings)


def _with_preprocessing(config: EquiAVConfig, cfg: FinetuneConfig) -> EquiAVConfig:
    changes = {k: v for k, v in cfg.model_overrides.items() if k in PREPROCESSING_FIELDS}
    return config.replace(**changes) if changes else config


def parameter_groups(model: EquiAVClassifier, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Backbone (scale 1, absent when frozen) and head (scale ``head_lr_scale``) groups; the schedule multiplies
    its learning rate by each group's ``lr_scale`` at every step."""
    if cfg.freeze_backbone:
        for _, param in model.backbone_parameters():
            param.requires_grad_(False)
    groups = []
    backbone = [p for _, p in model.backbone_parameters() if p.requires_grad]
    if backbone:
        groups.append({"params": backbone, "lr_scale": 1.0, "name": "backbone"})
    groups.append(
        {
            "params": [p for _, p in model.head_parameters()],
            "lr_scale": cfg.optim.head_lr_scale,
            "name": "head",
        }
    )
    return groups


class FinetuneTrainer:
    """One process's share of a fine-tuning run (built by :func:`finetune`)."""

    def __init__(self, cfg: FinetuneConfig, ctx: DistributedContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.output = Path(cfg.output_dir)
        self.checkpoints = self.output / "checkpoints"
        set_deterministic(cfg.deterministic)
        seed_everything(cfg.seed)
        model_config = cfg.model_config()
        train_base = build_pretrain_dataset(cfg.data, model_config, "train")
        num_classes, names = class_info(train_base, cfg)
        self.model = build_classifier(cfg, num_classes, names)
        self.model.set_grad_checkpointing(cfg.grad_checkpointing)
        backbone = self.model.config.backbone
        self.model.to(ctx.device)
        seed_everything(cfg.seed + ctx.rank)

        if backbone.to_dict() != model_config.to_dict():
            train_base = build_pretrain_dataset(cfg.data, backbone, "train")
        self.train_set = LabelledDataset(
            train_base,
            num_classes,
            train=True,
            masks=mask_widths(cfg, backbone) if cfg.spec_augment else None,
        )
        self.val_set = LabelledDataset(
            build_pretrain_dataset(cfg.data, backbone, "val"), num_classes, train=False
        )
        self.batch_size = self._batch_size()
        self.sampler = self._sampler(train_base)
        self.steps_per_epoch = self.sampler.batches // cfg.optim.grad_accum
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training split ({len(self.train_set)} items) gives no full step of {self.batch_size} items x "
                f"{cfg.optim.grad_accum} micro-batches x {ctx.world_size} processes; lower the batch size"
            )
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        warmup = cfg.optim.warmup_steps
        if warmup is None:
            warmup = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, cfg),
            lr=cfg.optim.lr,
            betas=tuple(cfg.optim.betas),
            eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
        )
        self.schedule = WarmupCosineSchedule(
            self.optimizer, peak_lr=cfg.optim.lr, warmup_steps=min(warmup, self.total_steps),
            total_steps=self.total_steps, start_lr=cfg.optim.start_lr, final_lr=cfg.optim.final_lr,
        )  # fmt: skip
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.precision == "fp16")
        self.state = TrainingState(self.model, self.optimizer, self.schedule, self.scaler)
        self.tracker = BadItemTracker(cfg.data.max_bad_fraction, cfg.data.min_items_before_error)
        self.best = -math.inf
        self.position = self._restore_or_init()
        self.forward_model = self._wrap()

    # ---------------------------------------------------------------- setup

    def _batch_size(self) -> int:
        cfg = self.cfg
        if cfg.global_batch_size is None:
            return cfg.batch_size
        per_step = self.ctx.world_size * cfg.optim.grad_accum
        if cfg.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size {cfg.global_batch_size} is not divisible by processes x grad_accum ({per_step})"
            )
        return cfg.global_batch_size // per_step

    def _sampler(self, base: PretrainDataset) -> ShardSampler:
        common = dict(
            batch_size=self.batch_size, rank=self.ctx.rank, world_size=self.ctx.world_size, seed=self.cfg.seed
        )
        if not self.cfg.balanced_sampling:
            return ShardSampler(len(self.train_set), **common)
        if self.cfg.sample_weights:
            weights = read_sample_weights(self.cfg.sample_weights, len(self.train_set))
        else:
            weights = balancing_weights(item_labels(base))
        return WeightedShardSampler(weights, **common)

    def _wrap(self) -> torch.nn.Module:
        module: torch.nn.Module = self.model
        if self.ctx.distributed:
            if self.model.config.head == "mlp":
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        return module

    def _autocast(self):
        return autocast_context(self.cfg.precision, self.ctx.device)

    def _restore_or_init(self) -> Position:
        path = checkpoint_to_resume(self.cfg.resume, self.checkpoints, self.ctx)
        if path is None:
            return Position()
        state = load_checkpoint(path, map_location="cpu")
        position = self.state.restore(
            state, self.ctx, seed=self.cfg.seed, steps_per_epoch=self.steps_per_epoch
        )
        self.best = float(state["best"])
        if self.ctx.is_main:
            log.info("resumed from %s at step %d", path, position.step)
        return position

    def save(self) -> None:
        """Write the checkpoint of the current position (rank 0), with every rank's RNG states."""
        state = self.state.to_checkpoint(
            self.position, self.ctx, best=self.best, config=self.cfg.to_dict(),
            classifier_config=self.model.config.to_dict(),
        )  # fmt: skip
        if state is not None:
            save_checkpoint(self.checkpoints, self.position.step, state, keep_last=self.cfg.keep_last)
        barrier()

    # ---------------------------------------------------------------- steps

    def _batches(self, epoch: int, start_batch: int):
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_batch)
        loader = DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=self.sampler, num_workers=self.cfg.num_workers,
            collate_fn=collate_pretrain, drop_last=True, pin_memory=self.ctx.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
        )  # fmt: skip
        return iter(loader)

    def _inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """Model inputs cut to the smallest batch over ranks (unreadable items shrink a batch); None if empty."""
        rows = len(batch["index"]) if "index" in batch else 0
        if self.ctx.distributed:
            count = torch.tensor([rows], device=self.ctx.device)
            dist.all_reduce(count, op=dist.ReduceOp.MIN)
            rows = int(count.item())
        if rows < 2:
            return None
        inputs = {
            k: batch[k][:rows].to(self.ctx.device, non_blocking=True) for k in ("audio", "image", "target")
        }
        rng = np.random.default_rng([self.cfg.seed, self.position.step, self.ctx.rank])
        return mixup(inputs, self.cfg.mixup, self.cfg.mixup_alpha, rng)

    def train_step(self, batches) -> float | None:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss (None if nothing was read)."""
        accum = self.cfg.optim.grad_accum
        total, used, synced = 0.0, 0, False
        for micro in range(accum):
            batch = next(batches)
            self.tracker.update(batch)
            inputs = self._inputs(batch)
            if inputs is None:
                continue
            no_sync = getattr(self.forward_model, "no_sync", None)
            synced = micro == accum - 1
            context = no_sync() if (no_sync is not None and not synced) else nullcontext()
            with context:
                with self._autocast():
                    logits = self.forward_model(audio=inputs["audio"], image=inputs["image"])
                    loss = classification_loss(logits.float(), inputs["target"], self.cfg.multi_label)
                self.scaler.scale(loss / accum).backward()
            total += loss.item()
            used += 1
        if used and self.ctx.distributed and not synced:
            for param in self.model.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad.div_(self.ctx.world_size)
        self.schedule.step()
        if self.cfg.optim.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad_norm)
        if used:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total / used if used else None

    def validate(self) -> dict[str, float]:
        return evaluate_classifier(
            self.model, self.val_set, self.ctx, multi_label=self.cfg.multi_label,
            batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.num_workers, autocast=self._autocast,
            limit=self.cfg.max_val_items,
        )  # fmt: skip

    def export(self, name: str) -> None:
        if self.ctx.is_main:
            self.model.save_pretrained(self.output / name)

    def run(self) -> dict[str, Any]:
        cfg, position = self.cfg, self.position
        if self.ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        logger = TrainingLogger(
            self.output, enabled=self.ctx.is_main, total_steps=self.total_steps, start_step=position.step,
            tensorboard=cfg.tensorboard, progress=cfg.progress,
        )  # fmt: skip
        metric = main_metric(cfg.multi_label)
        logger.message(
            f"fine-tuning {self.model.config.mode}/{self.model.config.head}: {self.total_steps} steps "
            f"({self.steps_per_epoch} per epoch, batch {self.batch_size} x {cfg.optim.grad_accum} x "
            f"{self.ctx.world_size}) on {self.ctx.device}, from step {position.step}"
        )
        losses: list[float] = []
        last_val: dict[str, float] = {}
        self.model.train()
        try:
            while position.step < self.total_steps:
                batches = self._batches(position.epoch, position.batch_in_epoch * cfg.optim.grad_accum)
                while position.step < self.total_steps and position.batch_in_epoch < self.steps_per_epoch:
                    loss = self.train_step(batches)
                    if loss is not None:
                        losses.append(loss)
                    position.step += 1
                    position.batch_in_epoch += 1
                    epoch_done = position.batch_in_epoch == self.steps_per_epoch
                    if epoch_done:
                        position.epoch, position.batch_in_epoch = position.epoch + 1, 0
                    logger.advance()
                    done = position.step == self.total_steps
                    if position.step % cfg.log_every == 0 or done:
                        logger.log(position.step, self._train_summary(losses, position))
                        losses = []
                    due = position.step % cfg.val_every == 0 if cfg.val_every else epoch_done
                    if due or done:
                        last_val = self.validate()
                        logger.log(position.step, last_val, split="val")
                        logger.message(f"step {position.step} validation: {metric} {last_val[metric]:.2f}")
                        if last_val[metric] > self.best:
                            self.best = last_val[metric]
                            self.export("best")
                    if position.step % cfg.checkpoint_every_steps == 0 or done:
                        self.save()
                    if epoch_done:
                        break
            self.tracker.close()
            self.export("final")
            barrier()
        finally:
            logger.close()
        return {"step": position.step, "val": last_val, "best": self.best, "output_dir": str(self.output)}

    def _train_summary(self, losses: list[float], position: Position) -> dict[str, float]:
        values = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=self.ctx.device)
        if self.ctx.distributed:
            dist.all_reduce(values)
        summary = {"loss": (values[0] / values[1]).item() if values[1] > 0 else math.nan}
        summary["lr"] = self.schedule.lr_at(position.step - 1)
        summary["head_lr"] = self.optimizer.param_groups[-1]["lr"]
        summary["epoch"] = position.epoch + position.batch_in_epoch / self.steps_per_epoch
        return summary


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run (or resume) the fine-tuning described by ``cfg`` in this process (joins torchrun's group if launched so)."""
    ctx = setup_distributed(cfg.device)
    try:
        return FinetuneTrainer(cfg, ctx).run()
    finally:
        teardown_distributed()


# --------------------------------------------------------------------------------------------------- classify command


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``equiav eval classify``: score a classifier on the validation split of a data set."""
    parser.add_argument(
        "--model", required=True, help="classifier directory, hub repo or authors' fine-tuning .pth"
    )
    parser.add_argument(
        "--mode", default=None, help="mode of an authors' checkpoint when its shapes are ambiguous"
    )
    parser.add_argument(
        "--preset", default=None, help="preset for the sizes an authors' checkpoint cannot tell"
    )
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads (authors' checkpoints)")
    parser.add_argument("--data-kind", default="avdigits", choices=["avdigits", "manifest", "videos"])
    parser.add_argument(
        "--data", required=True, help="AV-digits root, or the evaluation manifest / video list"
    )
    parser.add_argument(
        "--label-csv", default=None, help="class_labels_indices.csv (manifest and video data)"
    )
    parser.add_argument(
        "--task", default=None, choices=["multi_label", "single_label"], help="default: the model's"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the metrics as JSON")


def run_classify(args: argparse.Namespace) -> dict[str, float]:
    ctx = setup_distributed(args.device)
    try:
        overrides = {"num_heads": args.num_heads} if args.num_heads else {}
        model = EquiAVClassifier.from_pretrained(args.model, mode=args.mode, config=args.preset, **overrides)
        model.to(ctx.device)
        multi_label = model.config.multi_label if args.task is None else args.task == "multi_label"
        data = DataConfig(kind=args.data_kind, path=args.data, val_path=args.data, label_csv=args.label_csv)
        base = build_pretrain_dataset(data, model.config.backbone, "val")
        dataset = LabelledDataset(base, model.config.num_classes, train=False)
        metrics = evaluate_classifier(
            model,
            dataset,
            ctx,
            multi_label=multi_label,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
        if ctx.is_main:
            print(" ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if args.output:
                Path(args.output).write_text(json.dumps({"model": args.model, **metrics}, indent=2) + "\n")
        return metrics
    finally:
        teardown_distributed()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m equiav.training.finetune``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg, args = config_from_args(sys.argv[1:] if argv is None else argv)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return
        result = finetune(cfg)
    except EquiAVError as error:
        raise SystemExit(f"equiav finetune: {type(error).__name__}: {error}") from None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
