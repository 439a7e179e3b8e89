"""The audio and image transformer towers that ``EquiAVModel`` and ``EquiAVClassifier`` share.

A tower is a modality token, a fixed sin-cos position embedding, a patch embedding, pre-norm ViT blocks and a final
LayerNorm. ``Towers`` registers them directly on the model under the authors' names (``modality_a``,
``pos_embed_a``, ``patch_embed_a``, ``blocks_a.i``, ``norm_a``; ``_v`` for the image tower), so state-dict keys are
the same as in the authors' checkpoints, and provides the input checks and the token computation both models use.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .checks import all_finite
from .config import EquiAVConfig
from .errors import InvalidInputError
from .layers import PatchEmbed, init_patch_embed, run_blocks, sincos_2d, transformer_blocks

# The parts of one tower, in the order the authors' models create them.
TOWER_PARTS = ("modality", "pos_embed", "patch_embed", "blocks", "norm")
TOWERS = ("a", "v")


class Towers(nn.Module):
    """Base class of the models with EquiAV towers: building, initializing and running them.

    ``_build_towers`` takes the (part, tower) pairs in creation order: the order fixes the random draws of a seeded
    initialization, which the two models keep as the authors' code had it.
    """

    tower_config: EquiAVConfig
    grad_checkpointing: bool

    def _build_towers(
        self, config: EquiAVConfig, order: Iterable[tuple[str, str]], drop_path: float = 0.0
    ) -> None:
        self.tower_config = config
        self.grad_checkpointing = False
        dim, eps = config.embed_dim, config.layer_norm_eps
        for part, tower in order:
            name = f"{part}_{tower}"
            if part == "modality":
                setattr(self, name, nn.Parameter(torch.zeros(1, 1, dim)))
            elif part == "pos_embed":
                grid = config.audio_grid if tower == "a" else config.image_grid
                self.register_buffer(name, sincos_2d(*grid, dim)[None])
            elif part == "patch_embed":
                setattr(self, name, PatchEmbed(config.patch_size, config.in_chans, dim))
            elif part == "blocks":
                blocks = transformer_blocks(
                    dim, config.depth, config.num_heads, config.mlp_ratio, eps, drop_path
                )
                setattr(self, name, blocks)
            else:
                setattr(self, name, nn.LayerNorm(dim, eps=eps))

    def _reset_towers(self) -> None:
        """The authors' initialization of the patch embeddings and modality tokens of the towers present."""
        towers = [tower for tower in TOWERS if hasattr(self, f"patch_embed_{tower}")]
        for tower in towers:
            init_patch_embed(getattr(self, f"patch_embed_{tower}"))
        for tower in towers:
            nn.init.normal_(getattr(self, f"modality_{tower}"), std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block in the backward pass to save activation memory."""
        self.grad_checkpointing = enable

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        raise NotImplementedError

    # ------------------------------------------------------------------ inputs

    def _check_input(
        self, x: torch.Tensor, name: str, kind: str, shapes: list[tuple[int, ...]], non_finite: str
    ) -> torch.Tensor:
        """``x`` on the model's device and dtype, after checking that it is a finite floating-point tensor whose shape
        after the batch dimension is one of ``shapes``."""
        expected = " or ".join("(B, " + ", ".join(map(str, shape)) + ")" for shape in shapes)
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(f"{name} must be a tensor of shape {expected}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InvalidInputError(f"{name} must be a {kind}, got dtype {x.dtype}")
        if tuple(x.shape[1:]) not in shapes:
            raise InvalidInputError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
        if not all_finite(x):
            raise InvalidInputError(non_finite)
        return x.to(device=self.device, dtype=self.dtype)

    def _check_audio(self, audio: torch.Tensor) -> torch.Tensor:
        cfg = self.tower_config
        frames = (cfg.target_length, cfg.num_mel_bins)
        return self._check_input(
            audio, "audio", "floating-point filterbank", [frames, (cfg.in_chans, *frames)],
            "audio filterbank contains NaN or infinite values",
        )  # fmt: skip

    def _check_image(self, image: torch.Tensor) -> torch.Tensor:
        cfg = self.tower_config
        return self._check_input(
            image, "image", "normalized floating-point tensor", [(cfg.in_chans, cfg.image_size, cfg.image_size)],
            "image tensor contains NaN or infinite values",
        )  # fmt: skip

    # ------------------------------------------------------------------ tokens

    def _embed_audio_patches(self, audio: torch.Tensor) -> torch.Tensor:
        """Patch tokens of a checked filterbank batch (``_check_audio``)."""
        if audio.dim() == 3:
            x = self.patch_embed_a.forward_single_channel(audio.transpose(1, 2).unsqueeze(1))
        else:
            x = self.patch_embed_a(audio.transpose(2, 3))
        return x + self.pos_embed_a + self.modality_a

    def _embed_image_patches(self, image: torch.Tensor) -> torch.Tensor:
        """Patch tokens of a checked image batch (``_check_image``)."""
        x = self.patch_embed_v(image)
        return x + self.pos_embed_v + self.modality_v

    def _run_blocks(self, x: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        return run_blocks(blocks, x, recompute)

    def audio_tokens(self, audio: torch.Tensor) -> torch.Tensor:
        """Final-normed audio patch tokens (B, N, D) of normalized filterbanks (B, T, F) or (B, C, T, F); token
        p = f * (T / patch) + t (frequency row f, time column t)."""
        return self._audio_tokens(self._check_audio(audio))

    def _audio_tokens(self, audio: torch.Tensor) -> torch.Tensor:
        return self.norm_a(self._run_blocks(self._embed_audio_patches(audio), self.blocks_a))

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Final-normed image patch tokens (B, N, D) of normalized images (B, C, S, S); token p = row * (S / patch)
        + column."""
        return self._image_tokens(self._check_image(image))

    def _image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        return self.norm_v(self._run_blocks(self._embed_image_patches(image), self.blocks_v))
