"""Linear layers whose weights are prepacked once for CPU inference, in oneDNN's blocked layout.

PyTorch multiplies by a linear layer's weight as it is stored: float32 through its BLAS (MKL), bfloat16 through
oneDNN, which reorders the weight into its blocked layout on every call. ``PackedLinear`` keeps a copy of the weight
in that layout and multiplies by it directly with oneDNN's linear kernel. On a 2-core AVX-512 CPU (AMD EPYC, one
thread; ``benchmarks/bench_inference.py --batch-sizes 1``) one clip and one image through ``equiav-base`` took 1.32
instead of 1.48 s in float32 (1.12x) and 0.71 instead of 0.77 s in bfloat16 (1.08x; there the same embeddings bit for
bit); float32 outputs move by float rounding only.

It is opt-in (``EquiAVModel.pack_for_cpu``) because the packed copies add the size of every linear weight again
(0.84 GB for ``equiav-base`` in float32). Training, autocast, ``torch.compile`` and other devices use the plain
weight, so a packed model still trains, moves and saves as before.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


def packable_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes whose weights oneDNN can prepack on this CPU: float32, and bfloat16 where the CPU has the
    instructions oneDNN's bfloat16 kernels need (AVX-512 BW/VL/DQ or AVX-NE-CONVERT)."""
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (torch.float32, torch.bfloat16)
    return (torch.float32,)


def packing_available() -> bool:
    """Whether this PyTorch build has oneDNN and the two operators packing needs."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return callable(torch.ops.mkldnn._reorder_linear_weight) and callable(
            torch.ops.mkldnn._linear_pointwise
        )
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Linear):
    """``nn.Linear`` that multiplies by a prepacked copy of its weight in CPU inference (float32 or bfloat16, no
    autograd, no autocast, not compiling); elsewhere it is a plain ``nn.Linear``.

    The copy is made on the first such call and made again whenever the weight changes (in place, as an optimizer
    or ``load_state_dict`` does, or replaced); moving or casting the module drops it. It is never saved.
    """

    _packed: tuple[tuple[int, int, torch.dtype], torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        """A ``PackedLinear`` sharing ``linear``'s parameters (nothing is copied)."""
        packed = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        packed.weight, packed.bias = linear.weight, linear.bias
        packed.train(linear.training)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._packed_weight(x)
        if weight is None:
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(rows, weight, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        weight = self.weight
        if not (
            x.device.type == "cpu"
            and weight.device.type == "cpu"
            and x.dtype == weight.dtype
            and x.dtype in packable_dtypes()
            and x.numel() > 0
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled("cpu")
        ):
            return None
        key = (weight.data_ptr(), weight._version, weight.dtype)
        if self._packed is None or self._packed[0] != key:
            rows = x.numel() // self.in_features
            self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows))
        return self._packed[1]

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        self._packed = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_packed", None)  # an opaque oneDNN tensor: remade on demand, never copied or pickled
        return state


def pack_linear_layers(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by a ``PackedLinear`` sharing its parameters; returns how many
    were replaced. Without oneDNN support it warns and changes nothing."""
    if not packing_available():
        warnings.warn(
            "this PyTorch build lacks oneDNN's linear operators; weights are left unpacked", stacklevel=2
        )
        return 0
    count = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear.from_linear(child))
                count += 1
    return count
