"""The process group and every collective operation of training and evaluation, in one place.

Launched by ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous
address); :func:`setup_distributed` then joins the default process group with NCCL on CUDA or gloo on CPU. Started
alone, it runs as a single process without a group, and every helper here falls back to rank 0 of 1: gathers return
the local tensor, reductions return it unchanged, so single-process code needs no special cases.

Gradient convention: :func:`all_gather_with_grad` is meant for a loss computed on each rank over its local anchors
against the gathered (global) keys, with DDP averaging the parameter gradients over ranks. Its backward sums the
gradients that every rank's loss sends to the gathered tensor and hands each rank the rows of its own slice. A local
embedding then carries ``sum over ranks r of dL_r/dz``, and DDP's division by the world size turns that into the
gradient of ``mean_r L_r``, which is the full-batch loss when every rank has the same number of rows. Keeping only the
local slice without the sum would drop the contributions of the other ranks' losses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError, InvalidInputError

_MAX_GATHER_DIMS = 8


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the number of processes and the device it works on."""

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
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def is_distributed() -> bool:
    """Whether a default process group is initialised (``torch.distributed`` available and set up)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default group, or 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group, or 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def _check_same_shape(tensor: torch.Tensor, name: str) -> None:
    """Raise on every rank if the ranks hold tensors of different shapes (``all_gather`` needs equal shapes)."""
    if tensor.dim() > _MAX_GATHER_DIMS:
        raise InvalidInputError(
            f"{name}: at most {_MAX_GATHER_DIMS} dimensions can be gathered, got {tensor.dim()}"
        )
    shape = torch.full((_MAX_GATHER_DIMS + 1,), -1, dtype=torch.int64, device=tensor.device)
    shape[0] = tensor.dim()
    shape[1 : tensor.dim() + 1] = torch.tensor(tensor.shape, dtype=torch.int64)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    described = [tuple(s[1 : int(s[0]) + 1].tolist()) for s in shapes]
    if len(set(described)) != 1:
        raise InvalidInputError(
            f"{name}: every rank must hold a tensor of the same shape to be gathered; shapes by rank: {described}"
        )


def _gather_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; backward sums the incoming grads over ranks and keeps our rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        ctx.rank = dist.get_rank()
        return torch.cat(_gather_parts(tensor), dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.contiguous().clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return summed[start : start + ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor, *, check_shapes: bool = True) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated along dim 0 in rank order, differentiable (see the module docstring).

    Every rank must call it with a tensor of the same shape and dtype, and must also run the backward pass.
    ``check_shapes`` spends one tiny extra collective to turn a shape mismatch into an
    :class:`~equiav.errors.InvalidInputError` instead of a hang or garbage. Without a process group, or with one
    process, the input itself is returned.
    """
    if get_world_size() == 1:
        return tensor
    if check_shapes:
        _check_same_shape(tensor, "all_gather_with_grad(tensor)")
    return _AllGatherWithGrad.apply(tensor)


def all_gather_no_grad(tensor: torch.Tensor, *, check_shapes: bool = True) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated along dim 0 in rank order, detached (this rank's own rows included).

    This is a plain ``all_gather``: no gradient flows back to any rank through the result. Without a process group the
    detached input is returned. Shapes must match on every rank, as for :func:`all_gather_with_grad`.
    """
    if get_world_size() == 1:
        return tensor.detach()
    if check_shapes:
        _check_same_shape(tensor, "all_gather_no_grad(tensor)")
    with torch.no_grad():
        return torch.cat(_gather_parts(tensor.detach()), dim=0)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's picklable ``value``, in rank order (``[value]`` without a process group)."""
    if get_world_size() == 1:
        return [value]
    values: list[Any] = [None] * get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``value`` on every rank."""
    if get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def min_over_ranks(value: int, group: Any = None) -> int:
    """The smallest of every rank's integer. It travels as a CPU tensor through ``group`` (pass a gloo group when the
    default group is NCCL), so agreeing on it never waits for the GPU."""
    if get_world_size() == 1:
        return value
    count = torch.tensor([value])
    dist.all_reduce(count, op=dist.ReduceOp.MIN, group=group)
    return int(count.item())


def mean_over_ranks(values: torch.Tensor) -> list[float]:
    """The element-wise mean of every rank's ``values``, read back as Python floats."""
    if get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= get_world_size()
    return [float(v) for v in values.tolist()]


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over ranks by hand (what DDP does when its hook did not run)."""
    world_size = get_world_size()
    for param in parameters:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad.div_(world_size)


def shard(count: int, rank: int, world_size: int) -> range:
    """The contiguous share of ``count`` evaluation items that ``rank`` scores: no padding, no item twice, sizes
    differing by at most one (gather the results with ``gather_in_order``)."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def _gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; ranks may hold different numbers of rows."""
    count = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    counts = [torch.empty_like(count) for _ in range(get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def gather_in_order(indices: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's ``indices`` (N,) and row tensors, sorted by index with each index kept once.

    Returns ``(indices, *tensors)``. Ranks may hold different numbers of rows (an unpadded shard), and a padded
    sampler's repeated items are dropped. Without a process group the local rows are sorted and de-duplicated. With
    NCCL the tensors must be on the GPU; gloo takes CPU tensors.
    """
    for tensor in tensors:
        if tensor.shape[0] != indices.shape[0]:
            raise InvalidInputError(
                f"every gathered tensor needs one row per index ({indices.shape[0]}), got {tensor.shape[0]} rows"
            )
    if get_world_size() > 1:
        indices = _gather_rows(indices)
        tensors = tuple(_gather_rows(tensor) for tensor in tensors)
    order = indices.argsort(stable=True)
    indices = indices[order]
    first = torch.ones_like(indices, dtype=torch.bool)
    first[1:] = indices[1:] != indices[:-1]
    keep = order[first]
    return (indices[first], *(tensor[keep] for tensor in tensors))
