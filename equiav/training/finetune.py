"""Fine-tuning: ``python -m equiav.training.finetune --recipe NAME --data.kind KIND --data.path PATH [...]``.

Builds an :class:`~equiav.classifier.EquiAVClassifier` (audio, visual or audio-visual; linear or mlp head) on the
towers of a pretrained model (``--backbone``; without one the ``--model`` preset starts from random weights) and
trains it as a task of the one training loop (:mod:`equiav.training.trainer`): the same launcher (alone or under
``torchrun``), config system (JSON file + ``--option`` overrides, booleans as ``--flag`` / ``--no-flag``), sampler,
checkpoints with exact resume, ``metrics.jsonl`` / TensorBoard logging and learning-rate schedule as pretraining.
The labelled data, its augmentations, the loss and the evaluation live in :mod:`equiav.training.classification`.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..classifier import EquiAVClassifier
from ..config import EquiAVConfig
from ..console import add_runtime_arguments, debugging, model_width, run_main, set_threads
from ..deprecation import moved_names
from ..errors import ConfigError, EquiAVError
from ..labels import load_label_names
from .classification import (
    DIGIT_NAMES,
    LabelledDataset,
    balancing_weights,
    classification_loss,
    evaluate_classifier,
    item_labels,
    main_metric,
    mixup,
    read_sample_weights,
)
from .datasets import DataConfig, PretrainDataset, build_dataset
from .options import add_options, config_from_layers, read_config_file
from .run_config import OptimConfig, RunConfig
from .trainer import Trainer, TrainingTask, run_training

log = logging.getLogger("equiav.finetune")

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
    * ``clip_grad_norm``: clip the global gradient norm to this value; 0 disables clipping (the authors' fine-tuning).
    """

    start_lr: float = 1e-6
    clip_grad_norm: float = 0.0
    warmup_epochs: float = 1.0
    head_lr_scale: float = 50.0


@dataclass(kw_only=True)
class FinetuneConfig(RunConfig):
    """Everything a fine-tuning run needs (besides the options of every run, ``RunConfig``); the JSON config file
    holds these fields (nested as objects).

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
    * ``mixup``: probability that an item is mixed with another item of its batch (authors 0.5; 0 disables).
    * ``mixup_alpha``: lambda ~ Beta(alpha, alpha) (authors 10).
    * ``spec_augment``: apply SpecAugment to the training audio.
    * ``freqm``: maximum frequency-mask width in bins (unset: 48 per 128 bins, scaled to the input).
    * ``timem``: maximum time-mask width in frames (unset: 192 per 1024 frames, scaled to the input).
    * ``balanced_sampling``: draw training items with class-balancing weights (with replacement).
    * ``sample_weights``: file of per-item sampling weights for ``balanced_sampling`` (default: computed from labels).
    * ``eval_batch_size``: items per evaluation batch on each process.
    * ``max_val_items``: evaluate on this many evenly spaced validation items only (0: all; for quick runs).
    * ``val_every``: evaluate every this many optimizer steps (0: at the end of every epoch, and at the end).
    """

    data: DataConfig
    backbone: str | None = None
    init_classifier: str | None = None
    mode: Literal["audio_visual", "audio", "visual"] = "audio_visual"
    head: Literal["linear", "mlp"] = "linear"
    head_hidden_dim: int = 512
    drop_path: float = 0.1
    task: Literal["multi_label", "single_label"] = "single_label"
    label_names: str | None = None
    freeze_backbone: bool = False
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    epochs: float = 10.0
    mixup: float = 0.0
    mixup_alpha: float = 10.0
    spec_augment: bool = True
    freqm: int | None = None
    timem: int | None = None
    balanced_sampling: bool = False
    sample_weights: str | None = None
    output_dir: str = "runs/finetune"
    keep_last: int = 2
    eval_batch_size: int = 64
    max_val_items: int = 0
    tensorboard: bool = False

    extra_minimums = {"eval_batch_size": 1, "head_hidden_dim": 1, "max_val_items": 0}

    def validate(self) -> None:
        super().validate()
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
        "--config",
        metavar="PATH",
        help="JSON file with FinetuneConfig fields (nested objects); relative data paths in it are taken from "
        "the file's own folder",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_runtime_arguments(parser, threads=False)
    add_options(parser, FinetuneConfig)
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[FinetuneConfig, argparse.Namespace]:
    """Parse the command line: defaults < recipe < ``--config`` file < options given on the command line."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = dict(RECIPES[args.recipe]) if args.recipe else {}
    if args.config:
        values = _merge(values, read_config_file(args.config))
    return config_from_layers(
        FinetuneConfig, values, args, skip=("recipe", "config", "print_config", "debug")
    ), args


# --------------------------------------------------------------------------------------------------- task


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


class FinetuneTask(TrainingTask):
    """Supervised classification of an :class:`EquiAVClassifier` on labelled data (mixup, SpecAugment, a head that
    trains at ``head_lr_scale`` times the backbone's rate); keeps the classifier with the best validation score in
    ``best/``."""

    logged_names = ("loss",)
    input_keys = ("audio", "image", "target")
    min_batch_rows = 2
    validate_each_epoch = True

    def __init__(self, cfg: FinetuneConfig) -> None:
        super().__init__(cfg, cfg.data)
        self.metric = main_metric(cfg.multi_label)
        self.best = -math.inf

    def build_model(self, ctx) -> EquiAVClassifier:
        self.train_base = build_dataset(self.cfg.data, self.cfg.model_config(), "train")
        self.num_classes, names = class_info(self.train_base, self.cfg)
        self.model = build_classifier(self.cfg, self.num_classes, names)
        return self.model

    def train_dataset(self) -> LabelledDataset:
        cfg, backbone = self.cfg, self.model.config.backbone
        if backbone.to_dict() != cfg.model_config().to_dict():
            self.train_base = build_dataset(cfg.data, backbone, "train")
        masks = mask_widths(cfg, backbone) if cfg.spec_augment else None
        self.train_set = LabelledDataset(self.train_base, self.num_classes, train=True, masks=masks)
        return self.train_set

    def sampling_weights(self, dataset) -> torch.Tensor | None:
        if not self.cfg.balanced_sampling:
            return None
        if self.cfg.sample_weights:
            return read_sample_weights(self.cfg.sample_weights, len(dataset))
        return balancing_weights(item_labels(self.train_base))

    def setup(self, trainer: Trainer) -> None:
        val_base = build_dataset(self.cfg.data, self.model.config.backbone, "val")
        self.val_set = LabelledDataset(val_base, self.num_classes, train=False)

    def parameter_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        return parameter_groups(model, self.cfg)

    def prepare_for_ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.model.config.head == "mlp":
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def loss(self, model, inputs, trainer):
        rng = np.random.default_rng([self.cfg.seed, trainer.position.step, trainer.ctx.rank])
        mixed = mixup(inputs, self.cfg.mixup, self.cfg.mixup_alpha, rng)
        logits = model(audio=mixed["audio"], image=mixed["image"])
        loss = classification_loss(logits.float(), mixed["target"], self.cfg.multi_label)
        return loss, loss.detach().float().reshape(1)

    def validate(self, trainer: Trainer) -> dict[str, float]:
        return evaluate_classifier(
            trainer.model, self.val_set, trainer.ctx, multi_label=self.cfg.multi_label,
            batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.num_workers, autocast=trainer.autocast,
            limit=self.cfg.max_val_items,
        )  # fmt: skip

    def after_validation(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if metrics[self.metric] > self.best:
            self.best = metrics[self.metric]
            if trainer.ctx.is_main:
                self.model.save_pretrained(trainer.output / "best")

    def validation_message(self, step: int, metrics: dict[str, float]) -> str:
        return f"step {step} validation: {self.metric} {metrics[self.metric]:.2f}"

    def describe(self, trainer: Trainer) -> str:
        config = self.model.config
        return (
            f"fine-tuning {config.mode}/{config.head}: {trainer.total_steps} steps ({trainer.steps_per_epoch} per "
            f"epoch, batch {trainer.batch_size} x {self.cfg.optim.grad_accum} x {trainer.ctx.world_size}) on "
            f"{trainer.ctx.device}, from step {trainer.position.step}"
        )

    def checkpoint_entries(self) -> dict[str, Any]:
        return {"best": self.best, "classifier_config": self.model.config.to_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])

    def result(self) -> dict[str, Any]:
        return {"best": self.best}


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run (or resume) the fine-tuning described by ``cfg`` in this process (joins torchrun's group if launched so)."""
    return run_training(FinetuneTask(cfg))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m equiav.training.finetune``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg, args = config_from_args(sys.argv[1:] if argv is None else argv)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return
        set_threads(cfg.threads, model_width(cfg.backbone) if cfg.backbone else cfg.model_config().embed_dim)
        result = finetune(cfg)
    except EquiAVError as error:
        if debugging():
            raise
        raise SystemExit(f"equiav finetune: {type(error).__name__}: {error}") from None
    print(json.dumps(result, indent=2))


__getattr__ = moved_names(
    __name__,
    {
        "spec_augment": "equiav.training.classification",
        "WeightedShardSampler": "equiav.training.sampler:WeightedRankSampler",
        "add_classify_arguments": "equiav.training.evaluate",
        "run_classify": "equiav.training.evaluate",
    },
)

if __name__ == "__main__":
    run_main(main, "python -m equiav.training.finetune")
