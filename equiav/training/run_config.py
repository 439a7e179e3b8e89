"""The options every training run has, whatever its objective: optimizer, schedule, length, precision, output,
checkpoints, resume, seeds, devices, logging. Each task's config (``PretrainConfig``, ``FinetuneConfig``) extends
:class:`RunConfig` with its own fields; the trainer reads only these."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

from ..config import EquiAVConfig
from ..errors import ConfigError
from .options import check_minimums, check_run_length


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

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first option outside its range (torch would say less, later)."""
        for name in ("lr", "start_lr", "final_lr", "weight_decay", "warmup_epochs", "clip_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"option --optim.{name.replace('_', '-')} must be a finite number >= 0, got {value}"
                )
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"option --optim.eps must be a finite number > 0, got {self.eps}")
        if not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"option --optim.betas must be two numbers in [0, 1), got {list(self.betas)}")


# Smallest allowed value of each integer option of every run (None, where allowed, means "not set").
RUN_MINIMUMS = {
    "batch_size": 1,
    "global_batch_size": 1,
    "max_steps": 1,
    "optim.grad_accum": 1,
    "optim.warmup_steps": 0,
    "checkpoint_every_steps": 1,
    "keep_last": 1,
    "log_every": 1,
    "num_workers": 0,
    "threads": 1,
    "val_every": 0,
}


@dataclass(kw_only=True)
class RunConfig:
    """Options of every training run; the JSON config file holds these fields (nested as objects).

    * ``model``: model preset name (``equiav-base``, ``equiav-tiny``, ``equiav-tiny-digits``, ``equiav-test``).
    * ``model_overrides``: JSON object of ``EquiAVConfig`` fields that replace the preset's values.
    * ``optim``: optimizer and schedule.
    * ``batch_size``: items per micro-batch on each process (global batch = batch_size x processes x grad_accum).
    * ``global_batch_size``: when set, ``batch_size`` becomes this divided by processes x ``optim.grad_accum``.
    * ``max_steps``: optimizer steps to train; when set it overrides ``epochs``.
    * ``epochs``: training length in epochs (may be fractional), used when ``max_steps`` is not set.
    * ``precision``: ``fp32``, ``bf16`` (autocast, CUDA or CPU) or ``fp16`` (autocast with a gradient scaler, CUDA).
    * ``compile``: run the model through ``torch.compile``.
    * ``grad_checkpointing``: recompute transformer blocks in the backward pass (less memory, ~30% more compute).
    * ``output_dir``: folder of the run (config, logs, checkpoints, exported models).
    * ``overwrite``: start fresh even when ``output_dir/checkpoints`` holds another run's checkpoints; they are moved
      into ``checkpoints/replaced-<UTC time>/``, never deleted. Without it such a start is refused.
    * ``checkpoint_every_steps``: save a checkpoint every this many optimizer steps (and always at the end).
    * ``keep_last``: number of checkpoints to keep (older ones of this run are deleted, never the newest).
    * ``resume``: ``auto`` (continue from the newest loadable checkpoint of ``output_dir`` if any), ``none`` (start
      fresh) or the path of a checkpoint file.
    * ``seed``: seed of the model initialization and of the sampling order (item draws use ``data.seed``).
    * ``deterministic``: use deterministic kernels only (needed for bit-exact resume; slower on GPU).
    * ``device``: ``auto``, ``cpu`` or ``cuda``.
    * ``num_workers``: data-loader worker processes per training process.
    * ``threads``: CPU threads of each training process (default: 1 for models narrower than 384, whose small
      operators slow down on several threads when other jobs share the cores; else one per core).
    * ``log_every``: log training metrics every this many optimizer steps.
    * ``val_every``: validate every this many optimizer steps (0: only at the end).
    * ``tensorboard``: also write TensorBoard event files.
    * ``progress``: show a progress bar (rank 0).
    * ``find_unused_parameters``: DDP's option, for models where some parameters get no gradient in a step.
    """

    model: str = "equiav-tiny-digits"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 32
    global_batch_size: int | None = None
    max_steps: int | None = None
    epochs: float = 20.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    grad_checkpointing: bool = False
    output_dir: str = "runs/train"
    overwrite: bool = False
    checkpoint_every_steps: int = 1000
    keep_last: int = 3
    resume: str = "auto"
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 4
    threads: int | None = None
    log_every: int = 10
    val_every: int = 0
    tensorboard: bool = True
    progress: bool = True
    find_unused_parameters: bool = False

    #: Integer options of the subclass with their minimums, checked besides ``RUN_MINIMUMS``.
    extra_minimums: ClassVar[dict[str, int]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first option out of range; subclasses add their own checks."""
        check_minimums(self, {**RUN_MINIMUMS, **self.extra_minimums})
        check_run_length(self.max_steps, self.epochs)
        self.optim.validate()
        self.model_config()

    def model_config(self) -> EquiAVConfig:
        """The model's config: the preset with ``model_overrides`` applied."""
        unknown = sorted(set(self.model_overrides) - {f.name for f in fields(EquiAVConfig)})
        if unknown:
            raise ConfigError(f"option --model-overrides: unknown EquiAVConfig field(s) {unknown}")
        return EquiAVConfig.from_preset(self.model, **self.model_overrides)

    def process_batch_size(self, world_size: int) -> int:
        """Items per micro-batch on each process: ``batch_size``, or ``global_batch_size`` split over the processes
        and accumulation steps."""
        if self.global_batch_size is None:
            return self.batch_size
        per_step = world_size * self.optim.grad_accum
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"option --global-batch-size {self.global_batch_size} is not divisible by processes x "
                f"grad_accum ({per_step})"
            )
        return self.global_batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
