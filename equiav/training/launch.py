"""Process setup for training: process group, device, seeding, deterministic mode and RNG snapshots.

Launched by ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous
address); :func:`setup_distributed` then joins the default process group with NCCL on CUDA or gloo on CPU. Started
alone, it runs as a single process without a group, so the same code serves both.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import CheckpointError, ConfigError
from .checkpoint import find_latest_checkpoint


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the number of processes and the device it trains on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ConfigError(f"environment variable {name} must be an integer, got {value!r}") from error


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; CUDA picks the GPU of this process's local rank."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was requested but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the process group described by torchrun's environment variables (if any) and choose the device."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=timeout_minutes),
            device_id=resolved if resolved.type == "cuda" else None,
        )
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=resolved)


def teardown_distributed() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Make torch pick deterministic kernels (error on ops that have none) and disable cuDNN autotuning.

    cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first use for deterministic results; it is set here when
    absent, so call this before the first CUDA matmul.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def rng_state() -> dict[str, Any]:
    """This process's global RNG states as tensors and plain numbers, so that ``torch.load(weights_only=True)`` works."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def gather_rng_states(ctx: DistributedContext) -> list[dict[str, Any]]:
    """The RNG states of every rank, in rank order (a collective: every rank must call it)."""
    if not ctx.distributed:
        return [rng_state()]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, rng_state())
    return states


def checkpoint_to_resume(resume: str, directory: Path, ctx: DistributedContext) -> Path | None:
    """The checkpoint that option ``resume`` names: "none", "auto" (newest valid one in ``directory``, chosen by
    rank 0 and broadcast so every rank loads the same file) or a path."""
    if resume == "none":
        return None
    if resume != "auto":
        if not Path(resume).is_file():
            raise CheckpointError(f"option --resume: checkpoint file {resume} does not exist")
        return Path(resume)
    chosen: list[str | None] = [None]
    if ctx.is_main:
        found = find_latest_checkpoint(directory)
        chosen = [None if found is None else str(found[0])]
    if ctx.distributed:
        dist.broadcast_object_list(chosen, src=0)
    return None if chosen[0] is None else Path(chosen[0])
