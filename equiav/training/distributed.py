"""Small ``torch.distributed`` helpers shared by the losses and the trainer.

Every helper also works without an initialised process group (one process): ranks and sizes fall back to 0 and 1 and
the gathers return the local tensor, so single-process code needs no special cases.

Gradient convention: :func:`all_gather_with_grad` is meant for a loss computed on each rank over its local anchors
against the gathered (global) keys, with DDP averaging the parameter gradients over ranks. Its backward sums the
gradients that every rank's loss sends to the gathered tensor and hands each rank the rows of its own slice. A local
embedding then carries ``sum over ranks r of dL_r/dz``, and DDP's division by the world size turns that into the
gradient of ``mean_r L_r``, which is the full-batch loss when every rank has the same number of rows. Keeping only the
local slice without the sum would drop the contributions of the other ranks' losses.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..errors import InvalidInputError

_MAX_GATHER_DIMS = 8


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
