"""Building blocks of the EquiAV model.

Parameter names follow the authors' checkpoints (``proj``, ``attn.qkv``, ``to_q``, ``fc1`` ...), so their weights load
by name. The transformer blocks are timm's ViT blocks; everything that timm has no equivalent for is defined here.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sine-cosine embedding of scalar positions: ``[sin(x w_k) | cos(x w_k)]`` with ``w_k = 10000^(-2k/dim)``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dimension must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(rows: int, cols: int, dim: int) -> torch.Tensor:
    """Fixed 2-D position embedding (rows * cols, dim), token p = row * cols + col.

    The first half encodes the column and the second half the row, as in MAE and the authors' code; for the audio
    grid (frequency rows, time columns) the first half therefore encodes time.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dimension must be a multiple of 4, got {dim}")
    index = torch.arange(rows * cols)
    column = sincos_1d(index % cols, dim // 2)
    row = sincos_1d(index // cols, dim // 2)
    return torch.cat([column, row], dim=1).to(torch.float32)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (B, C, H, W) -> (B, H/p * W/p, D), tokens in row-major order.

    The weights are a ``Conv2d`` (checkpoint keys ``proj.weight`` / ``proj.bias``), but the projection runs as one
    matrix product over the flattened patches, which is the same computation: a stride-p, size-p convolution sees
    each patch once. The matrix product is what every backend does fastest; oneDNN's bf16 convolution on CPUs with
    AMX took 70 % of a bf16 forward pass at batch 1. Rows and columns past the last whole patch are dropped, as the
    convolution drops them.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(x, self.proj.weight)

    def forward_single_channel(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as ``forward(x.expand(B, C, H, W))`` for (B, 1, H, W) input, at 1/C of the projection cost.

        Audio enters as C identical copies of the filterbank; summing the kernel over its input channels once is
        equivalent and avoids materializing the copies.
        """
        return self._project(x, self.proj.weight.sum(dim=1, keepdim=True))

    def _project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        p = self.patch_size
        rows, cols = height // p, width // p
        x = x[:, :, : rows * p, : cols * p]
        patches = x.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, rows * cols, channels * p * p)
        return F.linear(patches, weight.reshape(weight.shape[0], -1), self.proj.bias)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation of the augmentation encoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def augmentation_encoder(in_dim: int, embed_dim: int) -> nn.Sequential:
    """Three-layer MLP that embeds a raw augmentation vector (indices 0, 2, 4 hold the linear layers)."""
    return nn.Sequential(
        nn.Linear(in_dim, embed_dim),
        QuickGELU(),
        nn.Linear(embed_dim, embed_dim),
        QuickGELU(),
        nn.Linear(embed_dim, embed_dim),
    )


class CrossAttention(nn.Module):
    """Multi-head attention of augmentation queries over patch tokens (keys and values)."""

    def __init__(self, dim: int, query_dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.to_q = nn.Linear(query_dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """queries (B, S, Q) or (S, Q) shared by the batch, tokens (B, N, D) -> (B, S, D)."""
        q = self._heads(self.to_q(queries))
        if q.dim() == 3:
            q = q.unsqueeze(0).expand(tokens.shape[0], -1, -1, -1)
        k = self._heads(self.to_k(tokens))
        v = self._heads(self.to_v(tokens))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class TransformationPredictor(nn.Module):
    """Predicts the representation of an augmented input from the original's tokens and the augmentation's embedding.

    For each of S augmentation embeddings: a query attends over the final-normed patch tokens; the result is added to
    the mean-pooled tokens and refined by a pre-norm MLP. ``forward`` returns the mean over the S predictions, i.e.
    the centroid of the equivariant representations (with S = 1, the single prediction).
    """

    def __init__(
        self,
        dim: int,
        aug_dim: int,
        num_heads: int = 8,
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm_aug = nn.LayerNorm(aug_dim, eps=eps)
        self.attn = CrossAttention(dim, aug_dim, num_heads, head_dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def per_view(self, tokens: torch.Tensor, aug_embedding: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D), aug_embedding (B, S, A) or (S, A) -> one prediction per view (B, S, D)."""
        x = tokens.mean(dim=1, keepdim=True) + self.attn(self.norm_aug(aug_embedding), tokens)
        return x + self.mlp(self.norm(x))

    def forward(self, tokens: torch.Tensor, aug_embedding: torch.Tensor) -> torch.Tensor:
        return self.per_view(tokens, aug_embedding).mean(dim=1)


class ProjectionHead(nn.Module):
    """Linear-LN-ReLU-Linear-LN-ReLU-Linear-LN projection; outputs are not L2-normalized."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc3 = nn.Linear(hidden_dim, out_dim)
        self.norm3 = nn.LayerNorm(out_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.fc1(x)))
        x = F.relu(self.norm2(self.fc2(x)))
        return self.norm3(self.fc3(x))


def transformer_blocks(
    dim: int, depth: int, num_heads: int, mlp_ratio: float, eps: float, drop_path: float = 0.0
) -> nn.ModuleList:
    """``depth`` pre-norm ViT blocks (timm) with biased qkv and exact GELU."""
    norm = partial(nn.LayerNorm, eps=eps)
    return nn.ModuleList(
        Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm, drop_path=drop_path)
        for _ in range(depth)
    )


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, recompute: bool = False) -> torch.Tensor:
    """Apply the blocks in order; with ``recompute`` each block's activations are recomputed in the backward pass.

    Attention runs through PyTorch's fused kernel, except where two plain matrix products are faster (see
    ``plain_attention_pays``); the blocks' ``fused_attn`` switch is put back when the call returns.
    """
    if not blocks or not plain_attention_pays(x, blocks[0].attn.num_heads):
        return _apply_blocks(blocks, x, recompute)
    fused = [block.attn.fused_attn for block in blocks]
    try:
        for block in blocks:
            block.attn.fused_attn = False
        return _apply_blocks(blocks, x, recompute)
    finally:
        for block, setting in zip(blocks, fused):
            block.attn.fused_attn = setting


def _apply_blocks(blocks: nn.ModuleList, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
    return x


# On the CPU in bfloat16, PyTorch's fused attention kernel ran at under half the rate of the matrix products around
# it; for small score matrices two plain bf16 matrix products and a softmax were faster (equiav-base, one clip, 2-core AVX512-BF16 CPU, the two variants
# alternated: audio tower 355 -> 314 ms, image tower 123 -> 121 ms with 2 threads; 680 -> 624 and 328 -> 312 ms with
# one), while at 16 clips of 512 tokens the fused kernel was ahead. In float32 the fused kernel always won.
_PLAIN_ATTENTION_MAX_BYTES = 8 * 2**20


def plain_attention_pays(x: torch.Tensor, num_heads: int) -> bool:
    """Whether attention over ``x`` (batch, tokens, dim) should skip the fused kernel: CPU inference in bfloat16 or
    float16 (no autograd, not being compiled) with attention weights of at most 8 MiB per block (one 512-token clip
    of ``equiav-base``, or eight 224 x 224 images). Embeddings stay at cosine 0.99997 to float32 either way."""
    batch, tokens = x.shape[0], x.shape[1]
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.bfloat16, torch.float16)
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and batch * num_heads * tokens * tokens * x.element_size() <= _PLAIN_ATTENTION_MAX_BYTES
    )


def init_weights(module: nn.Module) -> None:
    """The authors' initialization: xavier-uniform linear weights with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_patch_embed(embed: PatchEmbed) -> None:
    """Xavier-uniform on the flattened convolution kernel, as MAE."""
    weight = embed.proj.weight
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))


__all__ = [
    "CrossAttention",
    "PatchEmbed",
    "ProjectionHead",
    "QuickGELU",
    "TransformationPredictor",
    "augmentation_encoder",
    "init_patch_embed",
    "init_weights",
    "run_blocks",
    "sincos_2d",
    "transformer_blocks",
]
