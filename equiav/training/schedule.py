"""Learning-rate schedule: per-step linear warmup, then a half-cycle cosine decay to a floor.

Step ``s`` counts optimizer updates from 0. With warmup length ``W`` and total length ``T``::

    s < W:       lr(s) = start_lr + (s / W) * (peak_lr - start_lr)
    W <= s < T:  lr(s) = final_lr + (peak_lr - final_lr) * (1 + cos(pi * (s - W) / (T - W))) / 2
    s >= T:      lr(s) = final_lr

This is the authors' ``WarmupCosineSchedule`` (reference 4.2). Their start_lr is 2e-7; the paper's Table A says 1e-6
(reference B11). Unlike their scheduler, which wrote the same value into every parameter group (B8), each group here
gets ``lr(s) * group["lr_scale"]`` (scale 1 when the key is absent), so per-group multipliers survive.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError


def warmup_cosine_lr(
    step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, start_lr: float, final_lr: float
) -> float:
    """The learning rate of optimizer step ``step`` (0-based); see the module docstring for the formula."""
    if step < warmup_steps:
        return start_lr + (step / warmup_steps) * (peak_lr - start_lr)
    if step >= total_steps:
        return final_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return final_lr + (peak_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Sets the learning rate of every parameter group of ``optimizer`` for the current optimizer step.

    Call :meth:`step` once per optimizer update, before ``optimizer.step()``: it applies ``lr(s)`` for the update about
    to happen and advances ``s``. The state is the step counter only, so checkpoints stay plain containers.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        peak_lr: float,
        warmup_steps: int,
        total_steps: int,
        start_lr: float = 2e-7,
        final_lr: float = 1e-6,
    ) -> None:
        if total_steps <= 0:
            raise ConfigError(f"schedule: total_steps must be positive, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ConfigError(
                f"schedule: warmup_steps must be between 0 and total_steps ({total_steps}), got {warmup_steps}"
            )
        for name, value in (("peak_lr", peak_lr), ("start_lr", start_lr), ("final_lr", final_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"schedule: {name} must be a finite non-negative number, got {value!r}")
        self.optimizer = optimizer
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.start_lr = float(start_lr)
        self.final_lr = float(final_lr)
        self.next_step = 0

    def lr_at(self, step: int) -> float:
        """Unscaled learning rate of optimizer step ``step``."""
        return warmup_cosine_lr(
            step,
            peak_lr=self.peak_lr,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            start_lr=self.start_lr,
            final_lr=self.final_lr,
        )

    def step(self) -> float:
        """Apply the learning rate of the coming update to every group, advance, and return the unscaled value."""
        lr = self.lr_at(self.next_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.next_step += 1
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "next_step": self.next_step,
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "start_lr": self.start_lr,
            "final_lr": self.final_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step counter; the shape of the schedule comes from the current config, not the checkpoint."""
        self.next_step = int(state["next_step"])
