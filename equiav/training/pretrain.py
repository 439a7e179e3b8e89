"""EquiAV pretraining: ``python -m equiav.training.pretrain --config run.json [--option value ...]``.

Runs alone (one process) or under ``torchrun`` (DDP: NCCL on GPUs, gloo on CPU, several nodes through torchrun's
rendezvous). One optimizer step: ``grad_accum`` micro-batches of ``batch_size`` items per process, each through the
model and :class:`~equiav.training.losses.EquiAVLoss` (under bf16 autocast when asked), backward, gradient-norm
clipping, then AdamW with the learning rate of :class:`~equiav.training.schedule.WarmupCosineSchedule`.

Output folder: ``config.json`` (the resolved run config), ``metrics.jsonl`` (+ ``tensorboard/``),
``checkpoints/ckpt-XXXXXXXX.pt`` (every ``checkpoint_every_steps`` steps and at the end, atomic, the last
``keep_last`` kept) and ``final/`` (``save_pretrained``, loadable with ``EquiAVModel.from_pretrained``).

Exact resume: a checkpoint holds the model, optimizer, schedule step, grad scaler, every rank's RNG states and the
data position (epoch, micro-batches done in it). Items are a function of (seed, epoch, index) and the sampler order of
(seed, epoch), so a resumed run starts the epoch's index list at the saved position without reading the skipped
items, and with ``deterministic`` on CPU it ends with the same weights as an uninterrupted run. (Tar shards are
streamed; their skipped batches are read and dropped.)

Restarts: under ``torchrun --max-restarts N`` a process that dies makes torchrun restart every process, and the
restarted run resumes from the newest checkpoint (``--resume auto``, the default). Launch torchrun with
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: with the store that torchrun shares with its processes by default (torch
2.14), a restarted process can read the addresses of the failed attempt's processes and fail to connect.

Configuration: the fields of :class:`PretrainConfig`, from a JSON file (``--config``) overridden by command-line
options; nested fields are ``--data.path``, ``--optim.lr``, ... and booleans take ``--flag`` / ``--no-flag``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset

from ..config import EquiAVConfig
from ..convert import load_mae_weights
from ..errors import ConfigError
from ..model import EquiAVModel
from .checkpoint import load_checkpoint, save_checkpoint
from .data import BadItemTracker, DataConfig, avdigits_eval_set, build_pretrain_dataset, collate_pretrain
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
from .losses import EquiAVLoss
from .options import (
    add_options,
    check_minimums,
    check_run_length,
    config_from_layers,
    read_config_file,
)
from .schedule import WarmupCosineSchedule

log = logging.getLogger("equiav.pretrain")

MODEL_INPUTS = (
    "audio",
    "image",
    "audio_aug",
    "image_aug",
    "t_audio",
    "t_image",
    "t_audio_views",
    "t_image_views",
)
LOSS_FIELDS = (
    "total",
    "inter",
    "intra_audio",
    "intra_visual",
    "acc_inter",
    "acc_intra_audio",
    "acc_intra_visual",
)
LOGGED_NAMES = ("loss", "loss_inter", "loss_intra_audio", "loss_intra_visual", "acc_inter", "acc_intra_audio",
                "acc_intra_visual")  # fmt: skip
# Test hook: SIGKILL this process in the middle of optimizer step N (after backward, before the update). Only the
# rank named by EQUIAV_FAULT_KILL_RANK when it is set (else every rank), and only in torchrun's first attempt
# (TORCHELASTIC_RESTART_COUNT unset or 0), so that a worker group restarted by --max-restarts runs on.
KILL_AT_STEP_ENV = "EQUIAV_FAULT_KILL_AT_STEP"
KILL_RANK_ENV = "EQUIAV_FAULT_KILL_RANK"


# --------------------------------------------------------------------------------------------------- configuration


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule.

    * ``lr``: peak learning rate reached after warmup (paper and authors: 1e-4 at global batch 128-256).
    * ``start_lr``: learning rate of the first warmup step (authors' code 2e-7; the paper's Table A says 1e-6).
    * ``final_lr``: floor of the cosine decay, reached at the last step.
    * ``betas``: AdamW betas.
    * ``weight_decay``: AdamW weight decay, applied to every parameter as the authors did.
    * ``eps``: AdamW epsilon.
    * ``warmup_steps``: linear warmup length in optimizer steps; when set it overrides ``warmup_epochs``.
    * ``warmup_epochs``: warmup length in epochs (may be fractional), used when ``warmup_steps`` is not set.
    * ``clip_grad_norm``: clip the global gradient norm to this value before each update; 0 disables clipping. The
      authors clipped at 0.01 (reference B14) on the 1/3-weighted loss, which normalizes almost every update; the
      default 1.0 only tames rare spikes. The gradient norm is logged either way.
    * ``grad_accum``: micro-batches whose gradients are summed into one optimizer step (each contrastive loss sees
      only its own micro-batch's negatives).
    """

    lr: float = 1e-4
    start_lr: float = 2e-7
    final_lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-5
    eps: float = 1e-8
    warmup_steps: int | None = None
    warmup_epochs: float = 2.0
    clip_grad_norm: float = 1.0
    grad_accum: int = 1


@dataclass
class LossConfig:
    """The EquiAV objective (Eq. 16).

    * ``inter_weight``: weight of the inter-modal loss (authors 1/3; the paper's lambda is 1, reference B10).
    * ``intra_audio_weight``: weight of the audio intra-modal equivariant loss.
    * ``intra_visual_weight``: weight of the visual intra-modal equivariant loss.
    * ``inter_temperature``: temperature of the inter-modal loss.
    * ``intra_temperature``: temperature of the intra-modal losses.
    * ``intra_variant``: ``with_positive`` (Eq. 9-10, the paper's choice) or ``equimod`` (EquiMod's Eq. A).
    * ``faithful``: gather the inter-modal negatives across ranks without gradient, as the authors did (B13).
    """

    inter_weight: float = 1 / 3
    intra_audio_weight: float = 1 / 3
    intra_visual_weight: float = 1 / 3
    inter_temperature: float = 0.07
    intra_temperature: float = 0.07
    intra_variant: Literal["with_positive", "equimod"] = "with_positive"
    faithful: bool = False


# Smallest allowed value of each integer option (None, where allowed, means "not set").
_MINIMUMS = {
    "batch_size": 1,
    "max_steps": 1,
    "optim.grad_accum": 1,
    "optim.warmup_steps": 0,
    "checkpoint_every_steps": 1,
    "keep_last": 1,
    "log_every": 1,
    "num_workers": 0,
    "val_every": 0,
    "val_batches": 0,
}


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs; the JSON config file holds these fields (nested as objects).

    * ``data``: the training data (see ``DataConfig``); ``data.kind`` and ``data.path`` are required.
    * ``model``: model preset name (``equiav-base``, ``equiav-tiny``, ``equiav-tiny-digits``, ``equiav-test``).
    * ``model_overrides``: JSON object of ``EquiAVConfig`` fields that replace the preset's values.
    * ``optim``: optimizer and schedule.
    * ``loss``: loss weights, temperatures and variants.
    * ``batch_size``: items per micro-batch on each process (global batch = batch_size x processes x grad_accum).
    * ``max_steps``: optimizer steps to train; when set it overrides ``epochs``.
    * ``epochs``: training length in epochs (may be fractional), used when ``max_steps`` is not set.
    * ``precision``: ``fp32``, ``bf16`` (autocast, CUDA or CPU) or ``fp16`` (autocast with a gradient scaler, CUDA).
    * ``compile``: run the model through ``torch.compile``.
    * ``grad_checkpointing``: recompute transformer blocks in the backward pass (less memory, ~30% more compute).
    * ``mae_init``: MAE ViT weights (a ``.pth`` or ``.safetensors``) that initialize both towers, as the paper does;
      used on a fresh start only.
    * ``output_dir``: folder of the run (config, logs, checkpoints, final model).
    * ``checkpoint_every_steps``: save a checkpoint every this many optimizer steps (and always at the end).
    * ``keep_last``: number of checkpoints to keep (older ones are deleted).
    * ``resume``: ``auto`` (continue from the newest loadable checkpoint of ``output_dir`` if any), ``none`` (start
      fresh) or the path of a checkpoint file.
    * ``seed``: seed of the model initialization and of the sampling order (item draws use ``data.seed``).
    * ``deterministic``: use deterministic kernels only (needed for bit-exact resume; slower on GPU).
    * ``device``: ``auto``, ``cpu`` or ``cuda``.
    * ``num_workers``: data-loader worker processes per training process.
    * ``log_every``: log training metrics every this many optimizer steps.
    * ``val_every``: validate every this many optimizer steps (0: only at the end).
    * ``val_batches``: validation micro-batches per evaluation for the loss (0: the whole validation split).
    * ``zero_shot_eval``: with AV-digits, also measure class-level zero-shot R@1 (audio to image and back) on the
      held-out speakers and images at each validation.
    * ``tensorboard``: also write TensorBoard event files.
    * ``progress``: show a progress bar (rank 0).
    * ``find_unused_parameters``: DDP's option; every parameter gets a gradient in EquiAV's forward, so it is off.
    """

    data: DataConfig
    model: str = "equiav-tiny-digits"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    batch_size: int = 32
    max_steps: int | None = None
    epochs: float = 20.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    grad_checkpointing: bool = False
    mae_init: str | None = None
    output_dir: str = "runs/pretrain"
    checkpoint_every_steps: int = 1000
    keep_last: int = 3
    resume: str = "auto"
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 4
    log_every: int = 10
    val_every: int = 0
    val_batches: int = 0
    zero_shot_eval: bool = True
    tensorboard: bool = True
    progress: bool = True
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_minimums(self, _MINIMUMS)
        check_run_length(self.max_steps, self.epochs)
        if self.optim.warmup_epochs < 0 or self.optim.clip_grad_norm < 0:
            raise ConfigError("options --optim.warmup-epochs and --optim.clip-grad-norm must be non-negative")
        self.model_config()

    def model_config(self) -> EquiAVConfig:
        """The model's config: the preset with ``model_overrides`` applied."""
        unknown = sorted(set(self.model_overrides) - {f.name for f in fields(EquiAVConfig)})
        if unknown:
            raise ConfigError(f"option --model-overrides: unknown EquiAVConfig field(s) {unknown}")
        return EquiAVConfig.from_preset(self.model, **self.model_overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m equiav.training.pretrain",
        description="Pretrain an EquiAV model. Options override the values of --config; run alone or under torchrun.",
    )
    parser.add_argument(
        "--config", metavar="PATH", help="JSON file with PretrainConfig fields (nested objects)"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as JSON and exit without training",
    )
    add_options(parser, PretrainConfig)
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[PretrainConfig, argparse.Namespace]:
    """Parse the command line: defaults < ``--config`` file < options given on the command line."""
    args = build_parser().parse_args(argv)
    values = read_config_file(args.config) if args.config else {}
    return config_from_layers(PretrainConfig, values, args, skip=("config", "print_config")), args


# --------------------------------------------------------------------------------------------------- data


class DataStream:
    """Micro-batches of one split for this rank, epoch by epoch, from a map-style or a streamed (shards) dataset."""

    def __init__(self, dataset, cfg: PretrainConfig, ctx: DistributedContext, shuffle: bool) -> None:
        self.dataset, self.cfg = dataset, cfg
        self.streamed = isinstance(dataset, IterableDataset)
        if self.streamed:
            self.sampler = None
            self.batches_per_epoch = dataset.batches_per_rank(cfg.batch_size, cfg.num_workers)
        else:
            self.sampler = ShardSampler(
                len(dataset), batch_size=cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed,
                shuffle=shuffle,
            )  # fmt: skip
            self.batches_per_epoch = self.sampler.batches
        self.pin_memory = ctx.device.type == "cuda"

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """The micro-batches of ``epoch`` from batch ``start_batch`` on."""
        self.dataset.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, start_batch)
        loader = DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size,
            sampler=self.sampler,
            num_workers=self.cfg.num_workers,
            collate_fn=collate_pretrain,
            drop_last=True,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
        )
        batches = iter(loader)
        if self.streamed:
            for _ in range(start_batch):
                next(batches)
        return batches


def _uniform_batch(batch: dict[str, Any], ctx: DistributedContext, group=None) -> dict[str, Any] | None:
    """The model inputs of ``batch``, cut to the smallest batch over ranks (unreadable items shrink a batch, and the
    cross-rank gathers need equal sizes); ``None`` when some rank has no item.

    The sizes travel as a CPU tensor through ``group`` (a gloo group), so agreeing on them never waits for the GPU.
    """
    rows = len(batch["index"]) if "index" in batch else 0
    if ctx.distributed:
        count = torch.tensor([rows])
        dist.all_reduce(count, op=dist.ReduceOp.MIN, group=group)
        rows = int(count.item())
    if rows == 0:
        return None
    return {k: batch[k][:rows].to(ctx.device, non_blocking=True) for k in MODEL_INPUTS}


# --------------------------------------------------------------------------------------------------- training


class Trainer:
    """One process's share of a pretraining run (built by :func:`train`)."""

    def __init__(self, cfg: PretrainConfig, ctx: DistributedContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.output = Path(cfg.output_dir)
        self.checkpoints = self.output / "checkpoints"
        set_deterministic(cfg.deterministic)
        seed_everything(cfg.seed)
        self.model_config = cfg.model_config()
        self.model = EquiAVModel(self.model_config)
        self.model.set_grad_checkpointing(cfg.grad_checkpointing)
        self.model.to(ctx.device)
        seed_everything(cfg.seed + ctx.rank)

        self.train_data = DataStream(
            build_pretrain_dataset(cfg.data, self.model_config, "train"), cfg, ctx, True
        )
        self.val_data = self._val_stream()
        self._eval_set: tuple[torch.Tensor, ...] | None = None
        self.steps_per_epoch = self.train_data.batches_per_epoch // cfg.optim.grad_accum
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training split gives {self.train_data.batches_per_epoch} micro-batches of {cfg.batch_size} per "
                f"process and epoch, fewer than --optim.grad-accum ({cfg.optim.grad_accum}); lower --batch-size"
            )
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        warmup = cfg.optim.warmup_steps
        if warmup is None:
            warmup = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        warmup = min(warmup, self.total_steps)

        self.optimizer = torch.optim.AdamW(
            [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr_scale": 1.0}],
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            weight_decay=cfg.optim.weight_decay,
            eps=cfg.optim.eps,
        )
        self.schedule = WarmupCosineSchedule(
            self.optimizer, peak_lr=cfg.optim.lr, warmup_steps=warmup, total_steps=self.total_steps,
            start_lr=cfg.optim.start_lr, final_lr=cfg.optim.final_lr,
        )  # fmt: skip
        if cfg.precision == "fp16" and ctx.device.type != "cuda":
            raise ConfigError("option --precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.precision == "fp16")
        self.state = TrainingState(self.model, self.optimizer, self.schedule, self.scaler)
        self.criterion = EquiAVLoss(
            cfg.loss.inter_weight, cfg.loss.intra_audio_weight, cfg.loss.intra_visual_weight,
            inter_temperature=cfg.loss.inter_temperature, intra_temperature=cfg.loss.intra_temperature,
            intra_variant=cfg.loss.intra_variant, faithful=cfg.loss.faithful,
        )  # fmt: skip
        self.tracker = BadItemTracker(cfg.data.max_bad_fraction, cfg.data.min_items_before_error)
        self.position = self._restore_or_init()
        # CPU-side agreement between ranks (batch sizes); NCCL only moves GPU tensors.
        cpu_side = ctx.distributed and ctx.device.type == "cuda"
        self.control_group = dist.new_group(backend="gloo") if cpu_side else None
        self.forward_model = self._wrap()
        self.kill_at_step = _fault_kill_step(ctx.rank)

    # ---------------------------------------------------------------- setup

    def _val_stream(self) -> DataStream | None:
        try:
            dataset = build_pretrain_dataset(self.cfg.data, self.model_config, "val")
        except ConfigError as error:
            log.warning("no validation loss: %s", error)
            return None
        stream = DataStream(dataset, self.cfg, self.ctx, shuffle=False)
        return stream if stream.batches_per_epoch > 0 else None

    def _wrap(self) -> torch.nn.Module:
        module: torch.nn.Module = self.model
        if self.ctx.distributed:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            module = DistributedDataParallel(
                module, device_ids=device_ids, find_unused_parameters=self.cfg.find_unused_parameters
            )
        if self.cfg.compile:
            module = torch.compile(module)
        return module

    def _autocast(self):
        return autocast_context(self.cfg.precision, self.ctx.device)

    def _restore_or_init(self) -> Position:
        """Load the checkpoint chosen by ``resume`` into every component, or initialize a fresh run."""
        path = checkpoint_to_resume(self.cfg.resume, self.checkpoints, self.ctx)
        if path is None:
            if self.cfg.mae_init:
                loaded = load_mae_weights(self.model, self.cfg.mae_init)
                log.info("initialized %d tensors of both towers from %s", len(loaded), self.cfg.mae_init)
            return Position()
        state = load_checkpoint(path, map_location="cpu")
        position = self.state.restore(
            state, self.ctx, seed=self.cfg.seed, steps_per_epoch=self.steps_per_epoch
        )
        if self.ctx.is_main:
            log.info("resumed from %s at step %d", path, position.step)
        return position

    # ---------------------------------------------------------------- checkpoints

    def save(self) -> None:
        """Write the checkpoint of the current position (rank 0), with the RNG states of every rank."""
        state = self.state.to_checkpoint(
            self.position, self.ctx, config=self.cfg.to_dict(), model_config=self.model_config.to_dict()
        )
        if state is not None:
            save_checkpoint(self.checkpoints, self.position.step, state, keep_last=self.cfg.keep_last)
        barrier()

    # ---------------------------------------------------------------- steps

    def _micro_step(self, inputs: dict[str, torch.Tensor], sync: bool) -> torch.Tensor:
        """Forward, loss and backward of one micro-batch; returns the detached loss values (LOSS_FIELDS order)."""
        no_sync = getattr(self.forward_model, "no_sync", None)
        context = no_sync() if (no_sync is not None and not sync) else nullcontext()
        with context:
            with self._autocast():
                output = self.forward_model(**inputs)
                losses = self.criterion(output)
            self.scaler.scale(losses.total / self.cfg.optim.grad_accum).backward()
        return torch.stack([getattr(losses, name).detach().float() for name in LOSS_FIELDS])

    def _sync_gradients(self) -> None:
        """Average gradients over ranks by hand (only when a skipped last micro-batch left DDP no chance to)."""
        for param in self.model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad.div_(self.ctx.world_size)

    def train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss values, gradient norm)."""
        accum = self.cfg.optim.grad_accum
        totals, used, last_synced = None, 0, False
        for micro in range(accum):
            batch = next(batches)
            self.tracker.update(batch)
            inputs = _uniform_batch(batch, self.ctx, self.control_group)
            if inputs is None:
                last_synced = False
                continue
            values = self._micro_step(inputs, sync=micro == accum - 1)
            last_synced = micro == accum - 1
            totals = values if totals is None else totals + values
            used += 1
        if used and self.ctx.distributed and not last_synced:
            self._sync_gradients()
        if self.kill_at_step == self.position.step + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        self.schedule.step()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.optim.clip_grad_norm or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if used:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return (None if totals is None else totals / used), grad_norm.detach().float()

    # ---------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss over the val split (all ranks) and, for AV-digits, class-level zero-shot R@1 (rank 0)."""
        self.model.eval()
        metrics: dict[str, float] = {}
        if self.val_data is not None:
            batches = self.val_data.epoch(0)
            limit = self.cfg.val_batches or self.val_data.batches_per_epoch
            totals, used = torch.zeros(len(LOSS_FIELDS), device=self.ctx.device), 0
            for _ in range(min(limit, self.val_data.batches_per_epoch)):
                inputs = _uniform_batch(next(batches), self.ctx, self.control_group)
                if inputs is None:
                    continue
                with self._autocast():
                    losses = self.criterion(self.model(**inputs))
                totals += torch.stack([getattr(losses, name).float() for name in LOSS_FIELDS])
                used += 1
            if used:
                values = _mean_over_ranks(totals / used, self.ctx)
                metrics.update(zip(LOGGED_NAMES, values))
        if self.cfg.zero_shot_eval and self.cfg.data.kind == "avdigits" and self.ctx.is_main:
            metrics.update(self.avdigits_retrieval())
        self.model.train()
        return metrics

    def avdigits_retrieval(self) -> dict[str, float]:
        """Class-level zero-shot R@1 (fraction) on the held-out speakers and images, both directions."""
        from ..retrieval import retrieval_metrics

        if self._eval_set is None:
            data = self.cfg.data
            self._eval_set = avdigits_eval_set(
                data.path, self.model_config, "val", val_speakers=data.val_speakers,
                val_fraction_images=data.val_fraction_images, image_split_seed=data.image_split_seed,
            )  # fmt: skip
        fbanks, images, audio_labels, image_labels = self._eval_set
        audio = embed_in_batches(self.model.encode_audio, fbanks, 256, self.ctx.device, self._autocast)
        image = embed_in_batches(self.model.encode_image, images, 256, self.ctx.device, self._autocast)
        a2i = retrieval_metrics(audio, image, audio_labels, image_labels, ks=(1,))
        i2a = retrieval_metrics(image, audio, image_labels, audio_labels, ks=(1,))
        return {"r1_audio_to_image": a2i["R@1"] / 100, "r1_image_to_audio": i2a["R@1"] / 100}

    # ---------------------------------------------------------------- loop

    def run(self) -> dict[str, Any]:
        cfg, position = self.cfg, self.position
        if self.ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        logger = TrainingLogger(
            self.output, enabled=self.ctx.is_main, total_steps=self.total_steps, start_step=position.step,
            tensorboard=cfg.tensorboard, progress=cfg.progress,
        )  # fmt: skip
        samples_per_step = cfg.batch_size * cfg.optim.grad_accum * self.ctx.world_size
        logger.message(
            f"training {self.total_steps} steps ({self.steps_per_epoch} per epoch, {samples_per_step} samples each) "
            f"on {self.ctx.world_size} process(es), {self.ctx.device}, from step {position.step}"
        )
        window = _Window(self.ctx.device)
        last_train: dict[str, float] = {}
        last_val: dict[str, float] = {}
        self.model.train()
        try:
            while position.step < self.total_steps:
                batches = self.train_data.epoch(
                    position.epoch, position.batch_in_epoch * cfg.optim.grad_accum
                )
                while position.step < self.total_steps and position.batch_in_epoch < self.steps_per_epoch:
                    values, grad_norm = self.train_step(batches)
                    position.step += 1
                    position.batch_in_epoch += 1
                    if position.batch_in_epoch == self.steps_per_epoch:
                        position.epoch, position.batch_in_epoch = position.epoch + 1, 0
                    window.add(values, grad_norm)
                    logger.advance()
                    done = position.step == self.total_steps
                    if position.step % cfg.log_every == 0 or done:
                        last_train = window.summary(self.ctx, samples_per_step)
                        last_train["lr"] = self.schedule.lr_at(position.step - 1)
                        last_train["epoch"] = position.epoch + position.batch_in_epoch / self.steps_per_epoch
                        logger.log(position.step, last_train)
                    if (cfg.val_every and position.step % cfg.val_every == 0) or done:
                        with window.paused():
                            last_val = self.validate()
                        logger.log(position.step, last_val, split="val")
                        _print_val(logger, position.step, last_val)
                    if position.step % cfg.checkpoint_every_steps == 0 or done:
                        with window.paused():
                            self.save()
                    if position.batch_in_epoch == 0:
                        self.tracker.close()
                        break
            if self.ctx.is_main:
                self.model.save_pretrained(self.output / "final")
            barrier()
        finally:
            logger.close()
        return {"step": position.step, "train": last_train, "val": last_val, "output_dir": str(self.output)}


def _fault_kill_step(rank: int) -> int | None:
    """The step at which the test hook ``KILL_AT_STEP_ENV`` kills this process, or ``None``."""
    step, only_rank = os.environ.get(KILL_AT_STEP_ENV), os.environ.get(KILL_RANK_ENV)
    if not step or (only_rank and int(only_rank) != rank):
        return None
    return None if int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0) else int(step)


class _Window:
    """Running sums of the logged training values between two log lines."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.totals = torch.zeros(len(LOSS_FIELDS) + 1, device=self.device)
        self.steps = 0
        self.started = time.perf_counter()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent inside (validation, checkpointing) out of the throughput."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.started += time.perf_counter() - start

    def add(self, values: torch.Tensor | None, grad_norm: torch.Tensor) -> None:
        if values is not None:
            self.totals[:-1] += values
        self.totals[-1] += grad_norm.to(self.device)
        self.steps += 1

    def summary(self, ctx: DistributedContext, samples_per_step: int) -> dict[str, float]:
        """Means over the window and ranks (one collective, read as floats only here), then reset."""
        means = _mean_over_ranks(self.totals / max(self.steps, 1), ctx)
        elapsed = time.perf_counter() - self.started
        summary = dict(zip(LOGGED_NAMES, means[:-1]))
        summary["grad_norm"] = means[-1]
        summary["samples_per_s"] = self.steps * samples_per_step / elapsed if elapsed > 0 else 0.0
        self.reset()
        return summary


def _mean_over_ranks(values: torch.Tensor, ctx: DistributedContext) -> list[float]:
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world_size
    return [float(v) for v in values.tolist()]


def _print_val(logger: TrainingLogger, step: int, metrics: dict[str, float]) -> None:
    if metrics:
        logger.message(f"step {step} validation: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


@torch.no_grad()
def embed_in_batches(
    encode, inputs: torch.Tensor, batch_size: int, device: torch.device, autocast
) -> torch.Tensor:
    """L2-normalized float32 embeddings of ``inputs`` through ``encode`` (``encode_audio`` / ``encode_image``)."""
    parts = []
    for chunk in inputs.split(batch_size):
        with autocast():
            parts.append(encode(chunk.to(device)).float().cpu())
    return F.normalize(torch.cat(parts), dim=-1)


def train(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) the pretraining described by ``cfg`` in this process; joins torchrun's group if launched so."""
    ctx = setup_distributed(cfg.device)
    try:
        return Trainer(cfg, ctx).run()
    finally:
        teardown_distributed()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, args = config_from_args(argv)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"step": result["step"], "val": result["val"]}), file=sys.stdout)


if __name__ == "__main__":
    main()
