"""Model and preprocessing configuration, with named presets.

``EquiAVConfig`` holds everything needed to rebuild a model and to turn raw audio and images into its inputs. It
round-trips through JSON (``to_dict`` / ``from_dict``, ``save`` / ``load``), which is what ``config.json`` next to
``model.safetensors`` contains.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .dataclass_io import MAX_NESTING, from_dict, nesting_depth
from .errors import ConfigError, UnknownModelError

AUDIO_NORMALIZATIONS = ("dataset", "utterance")
# The ablation variants a config can name (see the fields of the same names).
VARIANTS = {
    "predictor": ("attention", "linear", "hypernetwork"),
    "inter_embedding": ("centroid", "predicted", "original", "augmented"),
    "intra_space": ("equivariant", "invariant"),
}
# Upper bounds of the size fields, checked before anything is allocated: a config.json or a checkpoint's shapes
# that ask for more describe no model worth building (ViT-22B has embed_dim 6144 and 48 blocks). Each is several
# times the largest published ViT's; raise an entry to build a larger model on purpose.
LIMITS: dict[str, int] = {
    "embed_dim": 16384, "depth": 256, "num_heads": 1024, "patch_size": 1024, "in_chans": 64, "audio_aug_dim": 4096,
    "visual_aug_dim": 4096, "aug_embed_dim": 16384, "cross_attn_heads": 1024, "cross_attn_head_dim": 4096,
    "proj_hidden_dim": 65536, "intra_proj_dim": 65536, "inter_proj_dim": 65536, "num_views": 65536,
    "hypernetwork_rank": 4096, "sample_rate": 1 << 26, "num_mel_bins": 4096, "target_length": 1 << 20,
    "image_size": 16384, "image_resize": 16384,
}  # fmt: skip
# Upper bound of the multipliers of a width (MLP hidden sizes).
MAX_RATIO = 64.0
# Upper bound of a model's estimated parameter and buffer count (16 GB in float32), checked after the fields.
MAX_PARAMETERS = 1 << 32
# The seeds torch.Generator accepts: a signed or unsigned 64-bit integer.
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)


@dataclass
class EquiAVConfig:
    """Architecture and preprocessing of an EquiAV model.

    The defaults are the paper's ``equiav-base``: two ViT-B/16 towers, an attention-based transformation predictor per
    modality, and 768 -> 2048 -> 2048 -> 512 projection heads.
    """

    # Transformer towers (one per modality, same shape).
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    in_chans: int = 3
    layer_norm_eps: float = 1e-5

    # Transformation predictor: augmentation encoder + cross-attention block.
    audio_aug_dim: int = 24
    visual_aug_dim: int = 18
    aug_embed_dim: int = 256
    cross_attn_heads: int = 8
    cross_attn_head_dim: int = 64
    cross_attn_mlp_ratio: float = 4.0

    # Variants of the paper's ablations (section 4.2); the defaults are the paper's model and the authors' checkpoints.
    # predictor: "attention" (the cross-attention block), "linear" (EquiMod) or "hypernetwork" (SIE-style, a low-rank
    # map of rank hypernetwork_rank). inter_embedding: what the inter-modal space embeds, "centroid" of the predicted
    # views, "predicted" (one view), "original" or "augmented" (the original input at inference). intra_space:
    # "equivariant" (predicted vs augmented embedding) or "invariant" (original vs augmented, no predictor).
    predictor: str = "attention"
    hypernetwork_rank: int = 8
    inter_embedding: str = "centroid"
    intra_space: str = "equivariant"

    # Projection heads (intra = equivariant space, inter = cross-modal space).
    proj_hidden_dim: int = 2048
    intra_proj_dim: int = 512
    inter_proj_dim: int = 512

    # Number of augmentation views whose equivariant representations are averaged into the centroid.
    num_views: int = 16
    view_seed: int = 0

    # Audio front-end (Kaldi filterbank, as AST / CAV-MAE / EquiAV).
    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    audio_mean: float = -4.346
    audio_std: float = 4.332
    # "dataset": (fbank - audio_mean) / audio_std, the authors' input. "utterance": each clip's own frames are
    # shifted and scaled to mean 0 and standard deviation 0.5, so the input does not depend on recording level.
    audio_normalization: str = "dataset"

    # Image front-end.
    image_size: int = 224
    image_resize: int = 224
    image_interpolation: str = "bicubic"
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    name: str = "equiav-base"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if not isinstance(values, list | tuple) or not all(_is_real(v) for v in values):
                raise ConfigError(f"config field '{name}' must be a list of 3 numbers (RGB), got {values!r}")
            setattr(self, name, tuple(float(v) for v in values))
        self.validate()

    def validate(self) -> None:
        """Check the values that would otherwise fail deep inside the model with an obscure error."""
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {value!r}")
            if value > limit:
                raise ConfigError(
                    f"config field '{name}' is {value}, above its limit of {limit} (equiav.config.LIMITS)"
                )
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"config field 'embed_dim' ({self.embed_dim}) must be divisible by 'num_heads' ({self.num_heads})"
            )
        for name in ("num_mel_bins", "target_length", "image_size"):
            if getattr(self, name) % self.patch_size:
                raise ConfigError(
                    f"config field '{name}' ({getattr(self, name)}) must be a multiple of 'patch_size' "
                    f"({self.patch_size})"
                )
        positive_reals = [
            "mlp_ratio", "layer_norm_eps", "cross_attn_mlp_ratio", "frame_shift_ms", "frame_length_ms", "audio_std",
        ]  # fmt: skip
        for name in ["audio_mean", *positive_reals]:
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or (name in positive_reals and value <= 0):
                kind = "a finite positive number" if name in positive_reals else "a finite number"
                raise ConfigError(f"config field '{name}' must be {kind}, got {value!r}")
        for name in ("mlp_ratio", "cross_attn_mlp_ratio"):
            if getattr(self, name) > MAX_RATIO:
                raise ConfigError(
                    f"config field '{name}' is {getattr(self, name)}, above its limit of {MAX_RATIO} "
                    "(equiav.config.MAX_RATIO)"
                )
        self._validate_seed()
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ConfigError("config fields 'image_mean' and 'image_std' must have 3 values (RGB)")
        rgb_ok = all(math.isfinite(v) for v in self.image_mean + self.image_std) and min(self.image_std) > 0
        if not rgb_ok:
            raise ConfigError(
                f"config fields 'image_mean' and 'image_std' must be finite and 'image_std' positive, got "
                f"{self.image_mean} and {self.image_std}"
            )
        if not isinstance(self.name, str) or not isinstance(self.extra, dict):
            raise ConfigError(
                f"config fields 'name' and 'extra' must be a string and a JSON object, got {self.name!r} and "
                f"{type(self.extra).__name__}"
            )
        if nesting_depth(self.extra) > MAX_NESTING:
            raise ConfigError(f"config field 'extra' is nested more than {MAX_NESTING} levels deep")
        if self.audio_normalization not in AUDIO_NORMALIZATIONS:
            raise ConfigError(
                f"config field 'audio_normalization' must be one of {', '.join(AUDIO_NORMALIZATIONS)}, "
                f"got {self.audio_normalization!r}"
            )
        for name, allowed in VARIANTS.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"config field '{name}' must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.image_interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ConfigError(
                f"config field 'image_interpolation' must be bicubic, bilinear or nearest, "
                f"got {self.image_interpolation!r}"
            )
        self._validate_size()

    def _validate_seed(self) -> None:
        """A view seed torch.Generator takes, instead of its bare "Overflow when unpacking long long"."""
        seed, (low, high) = self.view_seed, SEED_RANGE
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"config field 'view_seed' must be an integer, got {seed!r}")
        if not low <= seed <= high:
            raise ConfigError(
                f"config field 'view_seed' must lie in [-2**63, 2**64 - 1] (64 bits), got {seed}"
            )

    def _validate_size(self) -> None:
        """Refuse a model whose fields are each within LIMITS but whose product is not (e.g. wide and deep)."""
        count = self.estimated_parameters()
        if count > MAX_PARAMETERS:
            raise ConfigError(
                f"config describes a model of about {count:.3g} parameters (embed_dim={self.embed_dim}, "
                f"depth={self.depth}, ...), above the limit of {MAX_PARAMETERS:.3g} (equiav.config.MAX_PARAMETERS)"
            )

    def estimated_parameters(self) -> int:
        """Approximate number of parameters and buffers of an ``EquiAVModel`` with this config (its largest terms)."""
        dim, hidden = self.embed_dim, self.proj_hidden_dim
        block = int((4 + 2 * self.mlp_ratio) * dim * dim)
        tokens = self.num_audio_patches + self.num_image_patches
        patch = 2 * self.in_chans * self.patch_size**2 * dim
        width = self.cross_attn_heads * self.cross_attn_head_dim
        predictor = 4 * dim * width + int(2 * self.cross_attn_mlp_ratio * dim * dim) + self.aug_embed_dim**2
        heads = 2 * (dim * hidden + hidden * hidden) + 2 * hidden * (
            self.intra_proj_dim + self.inter_proj_dim
        )
        views = self.num_views * (self.audio_aug_dim + self.visual_aug_dim)
        return 2 * self.depth * block + tokens * dim + patch + 2 * predictor + 2 * heads + views

    @property
    def audio_grid(self) -> tuple[int, int]:
        """(frequency rows, time columns) of the audio patch grid."""
        return self.num_mel_bins // self.patch_size, self.target_length // self.patch_size

    @property
    def image_grid(self) -> tuple[int, int]:
        """(rows, columns) of the image patch grid."""
        return self.image_size // self.patch_size, self.image_size // self.patch_size

    @property
    def num_audio_patches(self) -> int:
        rows, cols = self.audio_grid
        return rows * cols

    @property
    def num_image_patches(self) -> int:
        rows, cols = self.image_grid
        return rows * cols

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_mean"] = list(self.image_mean)
        data["image_std"] = list(self.image_std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> EquiAVConfig:
        """Build a config from a dict, rejecting unknown fields (a typo would otherwise be ignored silently)."""
        return from_dict(cls, data, source)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> EquiAVConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source}: not valid JSON ({error})") from error
        except RecursionError as error:
            raise ConfigError(f"{source}: JSON nested too deeply to read") from error
        return cls.from_dict(data, source=source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EquiAVConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read config file ({error})") from error
        return cls.from_json(text, source=str(path))

    def replace(self, **changes: Any) -> EquiAVConfig:
        """A copy with ``changes`` applied; unknown field names raise ``ConfigError`` (not a bare TypeError)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields are {sorted(known)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> EquiAVConfig:
        """The config of a named preset (see ``list_models``), with optional field overrides."""
        if name not in _PRESETS:
            raise UnknownModelError(
                f"unknown model name {name!r}; available presets: {', '.join(list_models())}"
            )
        return cls(**{**_PRESETS[name], "name": name, **overrides})


_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's model: two ViT-B/16 towers.
    "equiav-base": {},
    # Same layout as the authors' parity fixtures: 64-d, 2 blocks, 4 heads (full-size inputs).
    "equiav-test": dict(
        embed_dim=64, depth=2, num_heads=4, aug_embed_dim=32, proj_hidden_dim=128, intra_proj_dim=32,
        inter_proj_dim=32,
    ),
    # Small towers and short inputs for CPU experiments (about 1 s of audio at 16 kHz).
    "equiav-tiny": dict(
        embed_dim=128, depth=4, num_heads=4, aug_embed_dim=64, cross_attn_heads=4, cross_attn_head_dim=32,
        proj_hidden_dim=256, intra_proj_dim=64, inter_proj_dim=64, target_length=128, image_size=64,
        image_resize=64,
    ),
    # Preset of the packaged demo model trained on spoken and handwritten digits.
    "equiav-tiny-digits": dict(
        embed_dim=128, depth=4, num_heads=4, aug_embed_dim=64, cross_attn_heads=4, cross_attn_head_dim=32,
        proj_hidden_dim=256, intra_proj_dim=64, inter_proj_dim=64, target_length=128, num_mel_bins=64,
        image_size=32, image_resize=32, patch_size=8,
    ),
}  # fmt: skip


def _is_real(value: Any) -> bool:
    """A real number that is not a bool (so a JSON string such as "4" is rejected, not silently converted)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def list_models() -> list[str]:
    """Names of the built-in presets, usable with ``EquiAVConfig.from_preset`` and ``EquiAVModel.from_pretrained``."""
    return sorted(_PRESETS)
