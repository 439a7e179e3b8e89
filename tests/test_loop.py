"""The training state both trainers checkpoint: exact restore, and the approximate one on another world size."""

from __future__ import annotations

import copy
import logging

import torch

from equiav.training.distributed import DistributedContext
from equiav.training.resume import Position, TrainingState
from equiav.training.schedule import WarmupCosineSchedule
from equiav.training.trainer import autocast_context

CPU = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def make_state(seed: int) -> TrainingState:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = WarmupCosineSchedule(optimizer, peak_lr=1e-2, warmup_steps=2, total_steps=10)
    return TrainingState(model, optimizer, schedule, torch.amp.GradScaler("cpu", enabled=False))


def train_steps(state: TrainingState, steps: int) -> None:
    for _ in range(steps):
        loss = state.model(torch.randn(5, 4)).square().mean()
        loss.backward()
        state.optimizer.step()
        state.optimizer.zero_grad()
        state.schedule.step()


def test_checkpoint_round_trip_restores_weights_optimizer_schedule_and_rng():
    state = make_state(0)
    train_steps(state, 3)
    saved = copy.deepcopy(state.to_checkpoint(Position(step=3, epoch=1, batch_in_epoch=2), CPU, best=0.5))
    assert saved["best"] == 0.5 and saved["world_size"] == 1 and saved["step"] == 3
    expected_draw = torch.rand(3)
    train_steps(state, 2)
    expected_weight = state.model.weight.detach().clone()

    fresh = make_state(1)
    position = fresh.restore(saved, CPU, seed=0, steps_per_epoch=4)
    assert position == Position(step=3, epoch=1, batch_in_epoch=2)
    torch.testing.assert_close(torch.rand(3), expected_draw)  # this rank's RNG continues where it stopped
    torch.set_rng_state(saved["rng"][0]["torch"])
    torch.rand(3)
    train_steps(fresh, 2)
    torch.testing.assert_close(fresh.model.weight, expected_weight, rtol=0, atol=0)


def test_restore_from_another_world_size_reseeds_and_stays_inside_the_epoch(caplog):
    state = make_state(0)
    saved = state.to_checkpoint(Position(step=7, epoch=2, batch_in_epoch=9), CPU)
    saved["rng"] = saved["rng"] * 2  # written by two processes
    with caplog.at_level(logging.WARNING):
        position = make_state(1).restore(saved, CPU, seed=5, steps_per_epoch=4)
    assert position == Position(step=7, epoch=2, batch_in_epoch=3)
    assert "resuming approximately" in caplog.text
    draw = torch.rand(2)
    torch.manual_seed(5 + 0 + 7)
    torch.testing.assert_close(draw, torch.rand(2))


def test_only_rank_zero_gets_the_checkpoint():
    other = DistributedContext(rank=1, local_rank=1, world_size=1, device=torch.device("cpu"))
    assert make_state(0).to_checkpoint(Position(), other) is None


def test_autocast_context_follows_precision():
    layer = torch.nn.Linear(4, 4)
    with autocast_context("bf16", torch.device("cpu")):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast_context("fp32", torch.device("cpu")):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
