"""Transformation predictors: from the original input's tokens and an augmentation's embedding, the embedding of the
augmented input. Every kind has ``per_view(tokens, aug_embedding) -> (B, S, D)`` (one prediction per augmentation)
and ``forward`` (their mean: the centroid).

* ``attention``: the paper's (:class:`~equiav.layers.TransformationPredictor`, cross-attention over the tokens);
  the authors' checkpoints hold this one.
* ``linear``: EquiMod's, one linear layer on the concatenated mean-pooled tokens and augmentation embedding.
* ``hypernetwork``: SIE-style, the augmentation embedding predicts the weights of a linear map applied to the
  mean-pooled tokens: ``z + U(a) (V(a)^T z) / sqrt(D) + b(a)``, with ``U``, ``V`` of rank ``hypernetwork_rank``
  (a full D x D map per augmentation would need D^2 outputs).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import EquiAVConfig
from .layers import TransformationPredictor


def _per_item(aug_embedding: torch.Tensor, batch: int) -> torch.Tensor:
    """(S, A) augmentation embeddings shared by the batch, or (B, S, A), as (B, S, A)."""
    return aug_embedding.unsqueeze(0).expand(batch, -1, -1) if aug_embedding.dim() == 2 else aug_embedding


class _ViewMean(nn.Module):
    def forward(self, tokens: torch.Tensor, aug_embedding: torch.Tensor) -> torch.Tensor:
        return self.per_view(tokens, aug_embedding).mean(dim=1)


class LinearPredictor(_ViewMean):
    """EquiMod's predictor: ``Linear([z, a])`` with ``z`` the mean-pooled tokens and ``a`` the augmentation embedding."""

    def __init__(self, dim: int, aug_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim + aug_dim, dim)

    def per_view(self, tokens: torch.Tensor, aug_embedding: torch.Tensor) -> torch.Tensor:
        aug = _per_item(aug_embedding, tokens.shape[0])
        pooled = tokens.mean(dim=1, keepdim=True).expand(-1, aug.shape[1], -1)
        return self.proj(torch.cat([pooled, aug], dim=-1))


class HypernetworkPredictor(_ViewMean):
    """SIE-style predictor: a low-rank linear map of the mean-pooled tokens whose weights the augmentation predicts."""

    def __init__(self, dim: int, aug_dim: int, rank: int) -> None:
        super().__init__()
        self.dim, self.rank = dim, rank
        self.left = nn.Linear(aug_dim, dim * rank)
        self.right = nn.Linear(aug_dim, dim * rank)
        self.shift = nn.Linear(aug_dim, dim)

    def per_view(self, tokens: torch.Tensor, aug_embedding: torch.Tensor) -> torch.Tensor:
        aug = _per_item(aug_embedding, tokens.shape[0])
        pooled = tokens.mean(dim=1)
        left = self.left(aug).unflatten(-1, (self.dim, self.rank))
        right = self.right(aug).unflatten(-1, (self.dim, self.rank))
        coefficients = torch.einsum("bsdr,bd->bsr", right, pooled) / math.sqrt(self.dim)
        return pooled[:, None] + torch.einsum("bsdr,bsr->bsd", left, coefficients) + self.shift(aug)


def build_predictor(config: EquiAVConfig) -> nn.Module:
    """The transformation predictor that ``config.predictor`` names, sized by ``config``."""
    dim, aug_dim = config.embed_dim, config.aug_embed_dim
    if config.predictor == "linear":
        return LinearPredictor(dim, aug_dim)
    if config.predictor == "hypernetwork":
        return HypernetworkPredictor(dim, aug_dim, config.hypernetwork_rank)
    return TransformationPredictor(
        dim=dim,
        aug_dim=aug_dim,
        num_heads=config.cross_attn_heads,
        head_dim=config.cross_attn_head_dim,
        mlp_ratio=config.cross_attn_mlp_ratio,
        eps=config.layer_norm_eps,
    )
