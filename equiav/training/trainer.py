"""The one training loop. Pretraining, fine-tuning and any other objective are :class:`TrainingTask` s on it.

The :class:`Trainer` owns what every run shares: the process group (alone, or DDP under ``torchrun``: NCCL on GPUs,
gloo on CPU), seeding, the AdamW optimizer and its warmup-cosine schedule, mixed precision, gradient accumulation and
clipping, the per-rank data stream, bad-item accounting, checkpoints with exact resume, logging and progress. A task
supplies only what differs: the model, its training data, the batch -> loss step, the validation and the export.

One optimizer step: ``grad_accum`` micro-batches of the per-process batch size, each through the task's loss (under
autocast when asked) and backward, then gradient-norm clipping and the update at the schedule's learning rate.

Seeds: the model is built after seeding every generator with ``seed``, so every rank starts from the same weights;
then each rank reseeds with ``seed + rank``, so random draws during training (drop path, mixup) differ between ranks.
Data items draw from their own (seed, epoch, index) generators and do not depend on either.

Output folder: ``config.json`` (the resolved run config), ``metrics.jsonl`` (+ ``tensorboard/``),
``checkpoints/ckpt-XXXXXXXX.pt`` (every ``checkpoint_every_steps`` steps and at the end, atomic, the last
``keep_last`` kept) and ``final/`` (the task's export).

Restarts: under ``torchrun --max-restarts N`` a process that dies makes torchrun restart every process, and the
restarted run resumes from the newest checkpoint (``--resume auto``, the default). Launch torchrun with
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: with the store that torchrun shares with its processes by default (torch
2.14), a restarted process can read the addresses of the failed attempt's processes and fail to connect.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..errors import ConfigError
from .checkpoint import load_checkpoint, save_checkpoint
from .datasets import BadItemTracker, DataConfig, collate_items
from .distributed import (
    DistributedContext,
    average_gradients,
    barrier,
    mean_over_ranks,
    min_over_ranks,
    setup_distributed,
    teardown_distributed,
)
from .logger import TrainingLogger
from .resume import Position, TrainingState, checkpoint_to_resume, config_differences
from .rng import seed_everything, set_deterministic
from .run_config import RunConfig
from .sampler import RankSampler, WeightedRankSampler
from .schedule import WarmupCosineSchedule

log = logging.getLogger("equiav.trainer")

# Test hook: SIGKILL this process in the middle of optimizer step N (after backward, before the update). Only the
# rank named by EQUIAV_FAULT_KILL_RANK when it is set (else every rank), and only in torchrun's first attempt
# (TORCHELASTIC_RESTART_COUNT unset or 0), so that a worker group restarted by --max-restarts runs on.
KILL_AT_STEP_ENV = "EQUIAV_FAULT_KILL_AT_STEP"
KILL_RANK_ENV = "EQUIAV_FAULT_KILL_RANK"

# Options whose change between a checkpoint and the run resuming it is expected (they do not alter the training).
_RESUME_NEUTRAL = {
    "resume", "overwrite", "progress", "tensorboard", "num_workers", "output_dir", "device", "threads",
}  # fmt: skip


def autocast_context(precision: str, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` for ``"bf16"`` / ``"fp16"`` on ``device``; nothing for ``"fp32"``."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class DataStream:
    """Micro-batches of one split for this rank, epoch by epoch, from a map-style or a streamed (shards) dataset.

    Map-style data goes through a :class:`RankSampler` (or, with ``weights``, a :class:`WeightedRankSampler`); a
    streamed dataset splits itself over ranks and workers. One ``DataLoader`` serves every epoch (``persistent``
    keeps its worker processes between epochs); items stay a function of (seed, epoch, index) either way.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        num_workers: int,
        seed: int,
        ctx: DistributedContext,
        shuffle: bool = True,
        weights: torch.Tensor | None = None,
        persistent: bool = True,
    ) -> None:
        self.dataset = dataset
        self.streamed = isinstance(dataset, IterableDataset)
        self.sampler: RankSampler | None = None
        if self.streamed:
            self.batches_per_epoch = dataset.batches_per_rank(batch_size, num_workers)
        else:
            placement = dict(batch_size=batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=seed)
            self.sampler = (
                RankSampler(len(dataset), shuffle=shuffle, **placement)
                if weights is None
                else WeightedRankSampler(weights, **placement)
            )
            self.batches_per_epoch = self.sampler.batches
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_items,
            drop_last=True,
            pin_memory=ctx.device.type == "cuda",
            persistent_workers=persistent and num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """The micro-batches of ``epoch`` from batch ``start_batch`` on (streamed data reads and drops the skipped
        ones)."""
        self.dataset.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, start_batch)
        batches = iter(self.loader)
        if self.streamed:
            for _ in range(start_batch):
                next(batches)
        return batches


class TrainingTask(ABC):
    """What one training objective adds to the :class:`Trainer`.

    Class attributes: ``logged_names`` names the values that :meth:`loss` returns besides the loss itself (logged
    as training metrics); ``input_keys`` are the batch entries the loss reads; batches with fewer than
    ``min_batch_rows`` usable rows on some rank are skipped; ``validate_each_epoch`` validates at every epoch end
    when ``val_every`` is 0; ``has_unused_parameters`` makes DDP find the parameters a step leaves without gradient.
    """

    logged_names: tuple[str, ...] = ("loss",)
    input_keys: tuple[str, ...] = ()
    min_batch_rows: int = 1
    validate_each_epoch: bool = False
    #: Some parameters of the model get no gradient (DDP must then look for them after each backward pass).
    has_unused_parameters: bool = False

    def __init__(self, cfg: RunConfig, data: DataConfig) -> None:
        self.cfg, self.data = cfg, data

    @abstractmethod
    def build_model(self, ctx: DistributedContext) -> torch.nn.Module:
        """The model at the start of training (called with every generator seeded with ``cfg.seed``)."""

    @abstractmethod
    def train_dataset(self) -> Dataset:
        """The training split (called after the model, with the generators reseeded per rank)."""

    def sampling_weights(self, dataset: Dataset) -> torch.Tensor | None:
        """Per-item sampling weights of the training split (with replacement), or ``None`` for a seeded shuffle."""
        return None

    def setup(self, trainer: Trainer) -> None:  # noqa: B027 - an optional hook
        """Build what the loss and the validation need, once the model and the training data exist."""

    def parameter_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """AdamW parameter groups; a group's ``lr_scale`` multiplies the scheduled learning rate."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def prepare_for_ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module DDP wraps (e.g. with synchronized batch norm)."""
        return model

    def on_fresh_start(self, model: torch.nn.Module) -> None:  # noqa: B027 - an optional hook
        """Called when the run starts without a checkpoint."""

    @abstractmethod
    def loss(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], trainer: Trainer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimize, detached float values of ``logged_names``) of one micro-batch, under autocast."""

    @abstractmethod
    def validate(self, trainer: Trainer) -> dict[str, float]:
        """Validation metrics (every rank calls it; the model is in eval mode and gradients are off)."""

    def after_validation(self, trainer: Trainer, metrics: dict[str, float]) -> None:  # noqa: B027 - an optional hook
        """React to a validation (e.g. keep the best model)."""

    def validation_message(self, step: int, metrics: dict[str, float]) -> str | None:
        """The line printed after a validation."""
        if not metrics:
            return None
        return f"step {step} validation: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())

    def describe(self, trainer: Trainer) -> str:
        """The line printed when training starts."""
        return (
            f"training {trainer.total_steps} steps ({trainer.steps_per_epoch} per epoch, "
            f"{trainer.samples_per_step} samples each) on {trainer.ctx.world_size} process(es), "
            f"{trainer.ctx.device}, from step {trainer.position.step}"
        )

    def checkpoint_entries(self) -> dict[str, Any]:
        """Entries a checkpoint holds besides the training state and the run config."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:  # noqa: B027 - an optional hook
        """Read back what :meth:`checkpoint_entries` saved."""

    def export(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the trained model (rank 0 only)."""
        model.save_pretrained(directory)

    def result(self) -> dict[str, Any]:
        """Entries the run's result holds besides the step, the last metrics and the output folder."""
        return {}


class Trainer:
    """One process's share of a training run of ``task`` (built and run by :func:`run_training`)."""

    def __init__(self, task: TrainingTask, ctx: DistributedContext) -> None:
        cfg = task.cfg
        self.task, self.cfg, self.ctx = task, cfg, ctx
        self.output = Path(cfg.output_dir)
        self.checkpoints = self.output / "checkpoints"
        if cfg.precision == "fp16" and ctx.device.type != "cuda":
            raise ConfigError("option --precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        self._check_output()
        resume_from = checkpoint_to_resume(cfg.resume, self.checkpoints, ctx, overwrite=cfg.overwrite)
        set_deterministic(cfg.deterministic)
        seed_everything(cfg.seed)
        self.model = task.build_model(ctx)
        self.model.set_grad_checkpointing(cfg.grad_checkpointing)
        self.model.to(ctx.device)
        seed_everything(cfg.seed + ctx.rank)

        self.batch_size = cfg.process_batch_size(ctx.world_size)
        train_set = task.train_dataset()
        self.train_data = DataStream(
            train_set, batch_size=self.batch_size, num_workers=cfg.num_workers, seed=cfg.seed, ctx=ctx,
            weights=task.sampling_weights(train_set),
        )  # fmt: skip
        self.steps_per_epoch = self.train_data.batches_per_epoch // cfg.optim.grad_accum
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training split gives {self.train_data.batches_per_epoch} micro-batches of {self.batch_size} "
                f"per process and epoch, fewer than --optim.grad-accum ({cfg.optim.grad_accum}) x 1 step; lower "
                "--batch-size"
            )
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.samples_per_step = self.batch_size * cfg.optim.grad_accum * ctx.world_size
        self.optimizer, self.schedule = self._optimizer()
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.precision == "fp16")
        self.state = TrainingState(self.model, self.optimizer, self.schedule, self.scaler)
        self.tracker = BadItemTracker(task.data.max_bad_fraction, task.data.min_items_before_error)
        # CPU-side agreement between ranks (batch sizes); NCCL only moves GPU tensors.
        cpu_side = ctx.distributed and ctx.device.type == "cuda"
        self.control_group = dist.new_group(backend="gloo") if cpu_side else None
        task.setup(self)
        self.position = self._restore(resume_from)
        self.forward_model = self._wrap()
        self.kill_at_step = fault_kill_step(ctx.rank)

    # ---------------------------------------------------------------- setup

    def _check_output(self) -> None:
        """Fail before anything is built when the output folder cannot be written (rank 0 checks)."""
        if not self.ctx.is_main:
            return
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.output / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise ConfigError(
                f"option --output-dir: cannot write to {self.cfg.output_dir} ({error})"
            ) from error

    def _optimizer(self) -> tuple[torch.optim.Optimizer, WarmupCosineSchedule]:
        optim = self.cfg.optim
        warmup = optim.warmup_steps
        if warmup is None:
            warmup = round(optim.warmup_epochs * self.steps_per_epoch)
        optimizer = torch.optim.AdamW(
            self.task.parameter_groups(self.model),
            lr=optim.lr,
            betas=tuple(optim.betas),
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
        schedule = WarmupCosineSchedule(
            optimizer, peak_lr=optim.lr, warmup_steps=min(warmup, self.total_steps), total_steps=self.total_steps,
            start_lr=optim.start_lr, final_lr=optim.final_lr,
        )  # fmt: skip
        return optimizer, schedule

    def _restore(self, path: Path | None) -> Position:
        """Load the checkpoint at ``path`` into every component, or start fresh."""
        if path is None:
            self.task.on_fresh_start(self.model)
            return Position()
        state = load_checkpoint(path, map_location="cpu")
        position = self.state.restore(
            state, self.ctx, seed=self.cfg.seed, steps_per_epoch=self.steps_per_epoch
        )
        self.task.restore(state)
        if self.ctx.is_main:
            log.info("resumed from %s at step %d", path, position.step)
            changed = [
                line
                for line in config_differences(state.get("config", {}), self.cfg.to_dict())
                if line.split(":")[0] not in _RESUME_NEUTRAL
            ]
            if changed:
                log.warning("the resumed run's config differs from its checkpoint's: %s", "; ".join(changed))
        return position

    def _wrap(self) -> torch.nn.Module:
        module: torch.nn.Module = self.model
        if self.ctx.distributed:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            module = DistributedDataParallel(
                self.task.prepare_for_ddp(module),
                device_ids=device_ids,
                find_unused_parameters=self.cfg.find_unused_parameters or self.task.has_unused_parameters,
            )
        if self.cfg.compile:
            module = torch.compile(module)
        return module

    def autocast(self) -> AbstractContextManager:
        """The autocast context of the run's precision on its device."""
        return autocast_context(self.cfg.precision, self.ctx.device)

    # ---------------------------------------------------------------- steps

    def uniform_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """The task's inputs of ``batch`` on the device, cut to the smallest batch over ranks (unreadable items
        shrink a batch, and cross-rank gathers need equal sizes); ``None`` when some rank has too few rows."""
        rows = len(batch["index"]) if "index" in batch else 0
        rows = min_over_ranks(rows, self.control_group)
        if rows < max(self.task.min_batch_rows, 1):
            return None
        return {k: batch[k][:rows].to(self.ctx.device, non_blocking=True) for k in self.task.input_keys}

    def _micro_step(self, inputs: dict[str, torch.Tensor], sync: bool) -> torch.Tensor:
        """Forward, loss and backward of one micro-batch; returns the task's detached logged values."""
        no_sync = getattr(self.forward_model, "no_sync", None)
        context = no_sync() if (no_sync is not None and not sync) else nullcontext()
        with context:
            with self.autocast():
                loss, values = self.task.loss(self.forward_model, inputs, self)
            self.scaler.scale(loss / self.cfg.optim.grad_accum).backward()
        return values

    def train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean logged values, gradient norm)."""
        accum = self.cfg.optim.grad_accum
        totals, used, last_synced = None, 0, False
        for micro in range(accum):
            batch = next(batches)
            self.tracker.update(batch)
            inputs = self.uniform_batch(batch)
            if inputs is None:
                last_synced = False
                continue
            values = self._micro_step(inputs, sync=micro == accum - 1)
            last_synced = micro == accum - 1
            totals = values if totals is None else totals + values
            used += 1
        if used and self.ctx.distributed and not last_synced:
            average_gradients(self.model.parameters())
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

    # ---------------------------------------------------------------- checkpoints and validation

    def save(self) -> None:
        """Write the checkpoint of the current position (rank 0), with the RNG states of every rank."""
        state = self.state.to_checkpoint(
            self.position, self.ctx, config=self.cfg.to_dict(), **self.task.checkpoint_entries()
        )
        if state is not None:
            save_checkpoint(self.checkpoints, self.position.step, state, keep_last=self.cfg.keep_last)
        barrier()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The task's validation metrics, with the model in eval mode."""
        self.model.eval()
        try:
            return self.task.validate(self)
        finally:
            self.model.train()

    # ---------------------------------------------------------------- loop

    def run(self) -> dict[str, Any]:
        cfg, position, task = self.cfg, self.position, self.task
        if self.ctx.is_main:
            (self.output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        logger = TrainingLogger(
            self.output, enabled=self.ctx.is_main, total_steps=self.total_steps, start_step=position.step,
            tensorboard=cfg.tensorboard, progress=cfg.progress,
        )  # fmt: skip
        logger.message(task.describe(self))
        window = _Window(task.logged_names, self.ctx.device)
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
                    epoch_done = position.batch_in_epoch == self.steps_per_epoch
                    if epoch_done:
                        position.epoch, position.batch_in_epoch = position.epoch + 1, 0
                    window.add(values, grad_norm)
                    logger.advance()
                    done = position.step == self.total_steps
                    if position.step % cfg.log_every == 0 or done:
                        last_train = self._train_summary(window)
                        logger.log(position.step, last_train)
                    due = (
                        position.step % cfg.val_every == 0
                        if cfg.val_every
                        else task.validate_each_epoch and epoch_done
                    )
                    if due or done:
                        with window.paused():
                            last_val = self.validate()
                        logger.log(position.step, last_val, split="val")
                        message = task.validation_message(position.step, last_val)
                        if message:
                            logger.message(message)
                        task.after_validation(self, last_val)
                    if position.step % cfg.checkpoint_every_steps == 0 or done:
                        with window.paused():
                            self.save()
                    if epoch_done:
                        self.tracker.close()
                        break
            self.tracker.close()
            if self.ctx.is_main:
                task.export(self.model, self.output / "final")
            barrier()
        finally:
            logger.close()
        return {
            "step": position.step,
            "train": last_train,
            "val": last_val,
            "output_dir": str(self.output),
            **task.result(),
        }

    def _train_summary(self, window: _Window) -> dict[str, float]:
        position = self.position
        summary = window.summary(self.samples_per_step)
        summary["lr"] = self.schedule.lr_at(position.step - 1)
        for group in self.optimizer.param_groups:
            if group.get("name") and group.get("lr_scale", 1.0) != 1.0:
                summary[f"{group['name']}_lr"] = group["lr"]
        summary["epoch"] = position.epoch + position.batch_in_epoch / self.steps_per_epoch
        return summary


def fault_kill_step(rank: int) -> int | None:
    """The step at which the test hook ``KILL_AT_STEP_ENV`` kills this process, or ``None``."""
    step, only_rank = os.environ.get(KILL_AT_STEP_ENV), os.environ.get(KILL_RANK_ENV)
    if not step or (only_rank and int(only_rank) != rank):
        return None
    return None if int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0) else int(step)


class _Window:
    """Running sums of the logged training values between two log lines."""

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.names, self.device = names, device
        self.reset()

    def reset(self) -> None:
        self.totals = torch.zeros(len(self.names) + 1, device=self.device)
        self.steps = 0
        self.steps_with_values = 0
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
            self.steps_with_values += 1
        self.totals[-1] += grad_norm.to(self.device)
        self.steps += 1

    def summary(self, samples_per_step: int) -> dict[str, float]:
        """Means over the window and ranks (one collective, read as floats only here), then reset."""
        counts = torch.full_like(self.totals, max(self.steps_with_values, 1))
        counts[-1] = max(self.steps, 1)
        means = mean_over_ranks(self.totals / counts)
        elapsed = time.perf_counter() - self.started
        summary = dict(
            zip(self.names, means[:-1] if self.steps_with_values else [math.nan] * len(self.names))
        )
        summary["grad_norm"] = means[-1]
        summary["samples_per_s"] = self.steps * samples_per_step / elapsed if elapsed > 0 else 0.0
        self.reset()
        return summary


def run_training(task: TrainingTask) -> dict[str, Any]:
    """Run (or resume) ``task`` in this process; joins torchrun's process group when launched so."""
    ctx = setup_distributed(task.cfg.device)
    try:
        return Trainer(task, ctx).run()
    finally:
        teardown_distributed()
