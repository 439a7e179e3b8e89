"""Reading checkpoint files and mapping their state dicts onto equiav's tensor names; no model is built here.

The authors' pretraining trainer saves ``torch.save(wrapper.state_dict())`` with every key prefixed by ``__M__.``;
other tools add ``module.`` (DDP) or nest the weights under ``"model"`` / ``"state_dict"``. All of these are accepted.
Files are read with ``torch.load(weights_only=True)``, which refuses pickles that would run code. Building models
from these state dicts is ``equiav.hub``'s job; ``equiav.convert`` writes them in the saved format.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from .checks import all_finite
from .config import EquiAVConfig
from .errors import CheckpointError

WRAPPER_PREFIXES = ("__M__.", "module.", "_orig_mod.")
NESTED_KEYS = ("model", "state_dict", "module")
UNUSED_BLOCK_NORMS = re.compile(r"^blocks_[av]\.\d+\.norm[12]_[av]\.(weight|bias)$")
LOSS_KEYS = re.compile(r"^__L_\w+__\.")
FINETUNE_HEAD = "mlp_head."


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors or a weights-only pickle), with wrapper nesting removed."""
    return read_checkpoint_and_config(path)[0]


def read_checkpoint_and_config(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``read_checkpoint``, and the ``model_config`` that equiav's trainer stores beside the weights (else None)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), None
        except Exception as error:
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only checkpoint ({type(error).__name__}: {error}). "
            "equiav never unpickles arbitrary objects; convert the file to safetensors or a plain state dict."
        ) from error
    stored = data.get("model_config") if isinstance(data, dict) else None
    for _ in range(3):
        if isinstance(data, dict):
            nested = [k for k in NESTED_KEYS if k in data and isinstance(data[k], dict)]
            if nested and not any(isinstance(v, torch.Tensor) for v in data.values()):
                data = data[nested[0]]
                continue
        break
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(data).__name__}")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: the checkpoint contains no tensors")
    check_stored_sizes(tensors, str(path))
    return tensors, stored if isinstance(stored, dict) else None


def check_stored_sizes(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse tensors whose shape claims more values than the file stores (expanded or overlapping views).

    A pickle may hold a view with zero strides, such as a (1, 10**10, 128) expansion of 128 values: it loads in
    kilobytes, but a model sized from its shape would need 80 GB. Shapes are only trusted as far as the bytes behind
    them go.
    """
    for key, tensor in tensors.items():
        stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
        if tensor.numel() > stored:
            raise CheckpointError(
                f"{source}: tensor '{key}' has shape {tuple(tensor.shape)} ({tensor.numel()} values) but the file "
                f"stores only {stored} values for it (an expanded view); save it with .contiguous() or .clone()"
            )


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise a ``CheckpointError`` naming the floating-point tensors that hold NaN or infinite values."""
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not all_finite(v))
    if bad:
        shown = ", ".join(bad[:10]) + (f", ... ({len(bad)} in all)" if len(bad) > 10 else "")
        raise CheckpointError(
            f"{source}: {len(bad)} tensor(s) hold NaN or infinite values: {shown}; the weights are damaged "
            "(pass check_weights=False to load them anyway)"
        )


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the authors' ``__M__.`` and the usual ``module.`` / ``_orig_mod.`` prefixes, however nested."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def clean_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip prefixes and drop what the model never uses: per-block ``norm{1,2}_{a,v}`` and loss temperatures."""
    cleaned = strip_prefixes(state_dict)
    return {k: v for k, v in cleaned.items() if not UNUSED_BLOCK_NORMS.match(k) and not LOSS_KEYS.match(k)}


def is_finetune_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(FINETUNE_HEAD) for k in state_dict)


def infer_config(
    state_dict: dict[str, torch.Tensor], base: EquiAVConfig | None = None, **overrides: Any
) -> EquiAVConfig:
    """Architecture sizes read off the tensor shapes; what shapes cannot tell comes from ``base`` or ``overrides``.

    Shapes fix the embedding, depth, patch, image, augmentation, predictor and head sizes. They cannot fix the number
    of attention heads of the towers (default: ``embed_dim // 64``, the ViT convention), nor how the audio tokens split
    into time and frequency (default: ``num_mel_bins`` from ``base``), nor how the predictor's cross-attention width
    splits into heads (default: ``base.cross_attn_heads``, 8, which the authors' code always uses). An image size other
    than the base's is resized to that size before its center crop, as the authors' code does.
    """
    base = base or EquiAVConfig()
    sd = strip_prefixes(state_dict)

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        if key not in sd:
            raise CheckpointError(
                f"cannot infer the architecture: tensor '{key}' is missing from the checkpoint"
            )
        if sd[key].dim() != ndim:
            raise CheckpointError(
                f"cannot infer the architecture: tensor '{key}' has shape {tuple(sd[key].shape)}, expected {ndim} "
                "dimensions"
            )
        return tuple(sd[key].shape)

    embed_dim, in_chans, patch, _ = shape("patch_embed_a.proj.weight", 4)
    depth = _block_count(sd, "blocks_a.")
    values: dict[str, Any] = dict(
        embed_dim=embed_dim,
        in_chans=in_chans,
        patch_size=patch,
        depth=depth,
        num_heads=base.num_heads if base.embed_dim == embed_dim else max(1, embed_dim // 64),
        mlp_ratio=shape("blocks_a.0.mlp.fc1.weight", 2)[0] / embed_dim,
    )
    if "pos_embed_v" in sd:
        tokens = shape("pos_embed_v", 3)[1]
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise CheckpointError(
                f"cannot infer the architecture: 'pos_embed_v' has {tokens} tokens, not a square grid of patches"
            )
        size = side * patch
        # A size other than the base's gets the authors' preprocessing, Resize(size) + CenterCrop(size).
        values.update(image_size=size, image_resize=base.image_resize if base.image_size == size else size)
    if "pos_embed_a" in sd:
        rows = overrides.get("num_mel_bins", base.num_mel_bins) // patch
        values.update(target_length=shape("pos_embed_a", 3)[1] // rows * patch)
    if "aug_encoder_a.0.weight" in sd:
        aug_embed, audio_aug = shape("aug_encoder_a.0.weight", 2)
        values.update(
            aug_embed_dim=aug_embed,
            audio_aug_dim=audio_aug,
            visual_aug_dim=shape("aug_encoder_v.0.weight", 2)[1],
        )
        inner = shape("cross_attn_a.attn.to_q.weight", 2)[0]
        heads = base.cross_attn_heads if inner % base.cross_attn_heads == 0 else 1
        values.update(
            cross_attn_heads=heads,
            cross_attn_head_dim=inner // heads,
            cross_attn_mlp_ratio=shape("cross_attn_a.mlp.fc1.weight", 2)[0] / embed_dim,
        )
    if "pred_a_intra.fc1.weight" in sd:
        values.update(
            proj_hidden_dim=shape("pred_a_intra.fc1.weight", 2)[0],
            intra_proj_dim=shape("pred_a_intra.fc3.weight", 2)[0],
            inter_proj_dim=shape("pred_a_inter.fc3.weight", 2)[0],
        )
    values.update(overrides)
    return base.replace(**values)


def _block_count(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of transformer blocks, whose keys ``prefix`` + i must be numbered 0, 1, ... without gaps."""
    numbers = set()
    for key in sd:
        if key.startswith(prefix):
            number = key[len(prefix) :].split(".")[0]
            if not (number.isascii() and number.isdigit()):
                raise CheckpointError(f"cannot infer the architecture: tensor '{key}' has no block number")
            numbers.add(int(number))
    if not numbers:
        raise CheckpointError(
            f"cannot infer the architecture: the checkpoint has no '{prefix}*' tensors (no transformer blocks)"
        )
    if numbers != set(range(len(numbers))):
        example = next(k for k in sd if k.startswith(f"{prefix}{max(numbers)}."))
        raise CheckpointError(
            f"cannot infer the architecture: the {len(numbers)} '{prefix}*' blocks must be numbered 0.."
            f"{len(numbers) - 1}, but tensor '{example}' has block number {max(numbers)}"
        )
    return len(numbers)


def check_state_dict(
    expected: dict[str, torch.Tensor],
    given: dict[str, torch.Tensor],
    source: str,
    allow_missing: tuple[str, ...] = (),
) -> None:
    """Raise a ``CheckpointError`` listing every missing, unexpected or mis-shaped tensor."""
    missing = sorted(k for k in expected if k not in given and not k.startswith(allow_missing))
    unexpected = sorted(k for k in given if k not in expected)
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    )
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
            problems.append(f"{len(items)} {title} tensor(s): {shown}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match the model; " + "; ".join(problems))


def mae_to_equiav(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a single-tower MAE / timm ViT state dict onto both EquiAV towers (reference 1.6).

    ``patch_embed.proj`` -> ``patch_embed_{a,v}.proj``, ``blocks.i`` -> ``blocks_{a,v}.i``, ``norm`` -> ``norm_{a,v}``.
    The class token and the learned position embedding have no counterpart and are skipped.
    """
    sd = strip_prefixes(state_dict)
    out = {}
    for key, value in sd.items():
        head, _, rest = key.partition(".")
        if head in ("patch_embed", "blocks", "norm"):
            for tower in ("a", "v"):
                out[f"{head}_{tower}.{rest}"] = value
    if not out:
        raise CheckpointError(
            "no MAE encoder weights found: expected keys like 'patch_embed.proj.weight', 'blocks.0.attn.qkv.weight'"
        )
    return out


def load_mae_weights(model: torch.nn.Module, source: str | Path | dict[str, torch.Tensor]) -> list[str]:
    """Initialize both towers from MAE ViT weights (a timm ``vit_base_patch16_224.mae`` state dict or MAE's ``.pth``).

    Returns the names of the model tensors that were set. Shapes must match the model exactly.
    """
    name = "MAE weights" if isinstance(source, dict) else str(source)
    sd = source if isinstance(source, dict) else read_checkpoint(source)
    mapped = mae_to_equiav(sd)
    own = model.state_dict()
    check_state_dict(
        {k: own[k] for k in mapped if k in own}, {k: v for k, v in mapped.items() if k in own}, name
    )
    unknown = sorted(k for k in mapped if k not in own)
    if unknown:
        raise CheckpointError(f"{name}: MAE tensors without a counterpart in the model: {unknown[:10]}")
    model.load_state_dict(mapped, strict=False)
    return sorted(mapped)
