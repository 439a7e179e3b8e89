"""EquiAV classifier: the pretrained towers with a classification head, as the authors fine-tune them.

Features per mode (reference 5.2), then a head (``linear``: one Linear; ``mlp``: Linear, BatchNorm1d, ReLU, Linear):

* ``audio_visual``: the mean of the final-normed audio tokens through ``pred_a_inter`` (Linear D -> P), the same for
  the image with ``pred_v_inter``, concatenated -> 2P features (the paper's "concatenated outputs, linear classifier").
* ``audio``: mean audio token through ``pred_a_inter`` -> P features.
* ``visual``: mean image token -> D features (the authors do not use ``pred_v_inter`` here).

D is ``embed_dim`` and P is ``inter_proj_dim``. The authors' code sized the head's first layer for another feature than
the one it receives in two combinations, so ``audio`` + ``linear`` and ``visual`` + ``mlp`` crashed (reference bug
B7). Here the head is always sized from the features of its mode (P for audio, D for visual, 2P for both); the three
combinations the authors' code can run keep their exact layout, so their fine-tuned checkpoints load unchanged.

Module names equal the authors' fine-tuning model (``patch_embed_a``, ``blocks_a.i``, ``norm_a``, ``pred_a_inter``,
``mlp_head.0`` ...). Only the towers a mode uses are built; loading an authors' checkpoint drops the tensors of the
unused tower. The transformer blocks use stochastic depth ``drop_path`` (0.1 for every block, as the authors) while
training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from .config import EquiAVConfig
from .dataclass_io import from_dict
from .errors import CheckpointError, ConfigError, InvalidInputError, UnknownModelError
from .hub import CONFIG_FILE, WEIGHTS_FILE, download_weights, looks_like_repo_id, read_weights, save_weights
from .labels import load_label_names, read_label_file
from .layers import init_weights
from .model_card import card_for
from .packing import pack_linear_layers
from .state_dicts import check_state_dict, clean_official_state_dict, infer_config, read_checkpoint
from .towers import TOWER_PARTS, Towers

MODES = ("audio_visual", "audio", "visual")
HEADS = ("linear", "mlp")
MODE_ALIASES = {
    "audio_visual": "audio_visual",
    "multimodal": "audio_visual",
    "av": "audio_visual",
    "audio": "audio",
    "audio_only": "audio",
    "visual": "visual",
    "video": "visual",
    "video_only": "visual",
    "visual_only": "visual",
}


def canonical_mode(mode: str) -> str:
    """``audio_visual``, ``audio`` or ``visual`` for any accepted spelling (the authors' ``multimodal``, ``audio_only``,
    ``video_only`` included)."""
    if mode not in MODE_ALIASES:
        raise ConfigError(f"mode must be one of {sorted(MODE_ALIASES)}, got {mode!r}")
    return MODE_ALIASES[mode]


@dataclass
class ClassifierConfig:
    """The backbone's ``EquiAVConfig`` plus the classification settings."""

    backbone: EquiAVConfig
    num_classes: int
    mode: str = "audio_visual"
    head: str = "linear"
    head_hidden_dim: int = 512
    drop_path: float = 0.1
    multi_label: bool = True
    label_names: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = EquiAVConfig.from_dict(self.backbone, source="classifier config 'backbone'")
        elif isinstance(self.backbone, str):
            self.backbone = EquiAVConfig.from_preset(self.backbone)
        self.mode = canonical_mode(self.mode)
        if self.head not in HEADS:
            raise ConfigError(f"classifier head must be one of {HEADS}, got {self.head!r}")
        for name in ("num_classes", "head_hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(
                    f"classifier config field '{name}' must be a positive integer, got {value!r}"
                )
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"classifier config field 'drop_path' must be in [0, 1), got {self.drop_path}")
        if self.label_names is not None:
            self.label_names = [str(name) for name in self.label_names]
            if len(self.label_names) != self.num_classes:
                raise ConfigError(
                    f"label_names has {len(self.label_names)} names but the classifier has {self.num_classes} classes"
                )

    @property
    def feature_dim(self) -> int:
        """Size of the head's input for this mode (see the module docstring)."""
        return {
            "audio_visual": 2 * self.backbone.inter_proj_dim,
            "audio": self.backbone.inter_proj_dim,
            "visual": self.backbone.embed_dim,
        }[self.mode]

    @property
    def uses_audio(self) -> bool:
        return self.mode in ("audio_visual", "audio")

    @property
    def uses_image(self) -> bool:
        return self.mode in ("audio_visual", "visual")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone.to_dict(),
            "num_classes": self.num_classes,
            "mode": self.mode,
            "head": self.head,
            "head_hidden_dim": self.head_hidden_dim,
            "drop_path": self.drop_path,
            "multi_label": self.multi_label,
            "label_names": self.label_names,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "classifier config") -> ClassifierConfig:
        """Build from a dict (e.g. a ``config.json``), rejecting unknown and missing fields."""
        return from_dict(cls, data, source, what="classifier config")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ClassifierConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: cannot read classifier config ({error})") from error
        return cls.from_dict(data, source=str(path))


def classification_head(kind: str, in_dim: int, hidden_dim: int, num_classes: int) -> nn.Sequential:
    """``linear``: Sequential(Linear); ``mlp``: Sequential(Linear, BatchNorm1d, ReLU, Linear) (authors' indices)."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_dim, num_classes))
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, num_classes),
    )


class EquiAVClassifier(
    Towers,
    PyTorchModelHubMixin,
    library_name="equiav",
    tags=["audio-visual", "audio-classification", "image-classification", "equiav"],
    license="mit",
):
    """Audio, visual or audio-visual classifier on EquiAV towers; ``classifier(audio=fbank, image=pixels)`` -> logits.

    Build with ``EquiAVClassifier(ClassifierConfig(...))`` (random towers; see ``from_backbone`` to start from a
    pretrained ``EquiAVModel``) or load with ``EquiAVClassifier.from_pretrained(path)``.
    """

    def __init__(self, config: ClassifierConfig | dict[str, Any]) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ClassifierConfig.from_dict(config)
        if not isinstance(config, ClassifierConfig):
            raise ConfigError(f"config must be a ClassifierConfig or a dict, got {type(config).__name__}")
        self.config = config
        self._hub_mixin_config = config.to_dict()
        bb = config.backbone
        towers = [tower for tower, used in (("a", config.uses_audio), ("v", config.uses_image)) if used]
        self._build_towers(bb, [(part, tower) for tower in towers for part in TOWER_PARTS], config.drop_path)
        dim = bb.embed_dim
        if config.uses_audio:
            self.pred_a_inter = nn.Linear(dim, bb.inter_proj_dim)
        if config.mode == "audio_visual":
            self.pred_v_inter = nn.Linear(dim, bb.inter_proj_dim)
        self.mlp_head = classification_head(
            config.head, config.feature_dim, config.head_hidden_dim, config.num_classes
        )
        self.reset_parameters()

    # ------------------------------------------------------------------ setup

    def reset_parameters(self) -> None:
        """The authors' initialization: xavier linear layers with zero bias, unit norms, N(0, 0.02) modality tokens."""
        self._reset_towers()
        self.apply(init_weights)

    @classmethod
    def from_backbone(cls, backbone: nn.Module, **settings: Any) -> EquiAVClassifier:
        """A classifier whose towers are copied from a pretrained ``EquiAVModel`` (the authors' fine-tuning start).

        Only the towers transfer: with the authors' ``inter_linear`` the pretrained MLP projection heads have no
        counterpart, so ``pred_*_inter`` and the head start from the usual initialization (reference 5.3).
        ``settings`` are ``ClassifierConfig`` fields other than ``backbone``.
        """
        model = cls(ClassifierConfig(backbone=backbone.config, **settings))
        own = model.state_dict()
        source = backbone.state_dict()
        transferred = {
            k: v for k, v in source.items() if k in own and not k.startswith(("pred_", "mlp_head."))
        }
        tower_keys = [k for k in own if not k.startswith(("pred_", "mlp_head."))]
        check_state_dict({k: own[k] for k in tower_keys}, transferred, "backbone")
        model.load_state_dict(transferred, strict=False)
        return model

    def pack_for_cpu(self) -> EquiAVClassifier:
        """Faster CPU inference with linear weights prepacked for oneDNN (see ``EquiAVModel.pack_for_cpu``)."""
        pack_linear_layers(self)
        return self

    @property
    def device(self) -> torch.device:
        return self.mlp_head[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mlp_head[0].weight.dtype

    @property
    def label_names(self) -> list[str] | None:
        return self.config.label_names

    def backbone_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters of the towers and projections (everything but ``mlp_head``)."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("mlp_head.")]

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters of the classification head (``mlp_head``), trained at a higher rate by the authors."""
        return [(n, p) for n, p in self.named_parameters() if n.startswith("mlp_head.")]

    # ------------------------------------------------------------------ features

    def features(self, audio: torch.Tensor | None = None, image: torch.Tensor | None = None) -> torch.Tensor:
        """The head's input (B, feature_dim) for this mode; inputs the mode does not use are ignored."""
        mode = self.config.mode
        if self.config.uses_audio and audio is None:
            raise InvalidInputError(f"mode {mode!r} needs audio: call classifier(audio=fbank, ...)")
        if self.config.uses_image and image is None:
            raise InvalidInputError(f"mode {mode!r} needs an image: call classifier(..., image=pixels)")
        if mode == "visual":
            return self.image_tokens(image).mean(dim=1)
        audio_features = self.pred_a_inter(self.audio_tokens(audio).mean(dim=1))
        if mode == "audio":
            return audio_features
        image_features = self.pred_v_inter(self.image_tokens(image).mean(dim=1))
        if audio_features.shape[0] != image_features.shape[0]:
            raise InvalidInputError(
                f"audio and image batches differ in size ({audio_features.shape[0]} vs {image_features.shape[0]})"
            )
        return torch.cat([audio_features, image_features], dim=1)

    def forward(self, audio: torch.Tensor | None = None, image: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.mlp_head(self.features(audio, image))

    # ------------------------------------------------------------------ prediction

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid per class for multi-label classifiers, softmax over classes otherwise."""
        return logits.sigmoid() if self.config.multi_label else logits.softmax(dim=-1)

    @torch.no_grad()
    def predict(
        self,
        audio: torch.Tensor | str | Path | Sequence[str | Path] | None = None,
        image: torch.Tensor | Any = None,
        top_k: int = 5,
    ) -> list[list[tuple[str, float]]]:
        """Top-``top_k`` (label name, probability) pairs per input, best first.

        ``audio``: normalized filterbanks, or audio file path(s); ``image``: normalized pixels, or image file path(s)
        / PIL images. Without label names the names are the class indices as strings.
        """
        if not isinstance(top_k, int) or top_k < 1:
            raise InvalidInputError(f"top_k must be a positive integer, got {top_k!r}")
        audio = self._audio_input(audio) if self.config.uses_audio else None
        image = self._image_input(image) if self.config.uses_image else None
        was_training = self.training
        self.eval()
        try:
            probs = self.probabilities(self(audio=audio, image=image).float())
        finally:
            self.train(was_training)
        names = self.label_names or [str(i) for i in range(self.config.num_classes)]
        scores, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [
            [(names[i], float(s)) for s, i in zip(row_scores.tolist(), row_indices.tolist())]
            for row_scores, row_indices in zip(scores, indices)
        ]

    def _audio_input(self, audio: Any) -> torch.Tensor | None:
        if audio is None or isinstance(audio, torch.Tensor):
            return audio
        from .audio import load_fbank

        paths = [audio] if isinstance(audio, (str, Path)) else list(audio)
        return torch.stack([load_fbank(p, self.config.backbone) for p in paths])

    def _image_input(self, image: Any) -> torch.Tensor | None:
        if image is None or isinstance(image, torch.Tensor):
            return image
        from .image import preprocess_images

        items = list(image) if isinstance(image, (list, tuple)) else [image]
        return preprocess_images(items, self.config.backbone)

    # ------------------------------------------------------------------ weights

    def generate_model_card(self, *args: Any, datasets: list[str] | None = None, **kwargs: Any) -> ModelCard:
        """The Hub card that ``save_pretrained`` writes as ``README.md`` (see ``equiav.model_card``)."""
        return card_for(self, datasets)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_weights(self, Path(save_directory))

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        name_or_path: str | Path,
        *,
        mode: str | None = None,
        label_names: Sequence[str] | str | Path | None = None,
        multi_label: bool | None = None,
        config: EquiAVConfig | str | dict | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        **overrides: Any,
    ) -> EquiAVClassifier:
        """Load a directory written by ``save_pretrained``, a hub repository, or an authors' fine-tuning ``.pth``.

        For the authors' files the mode and head are read off the tensor shapes; ``mode`` is needed only when the
        shapes allow two modes (e.g. embed_dim == 2 * inter_proj_dim). ``config`` (preset, dict or ``EquiAVConfig``)
        and backbone field ``overrides`` (e.g. ``num_heads=4``) fill in what shapes cannot tell. ``label_names`` (a
        list or a label file, see ``load_label_names``) replaces the stored names. Returned in eval mode.
        """
        path = Path(os.path.expanduser(str(name_or_path)))
        if path.is_dir():
            model = _load_directory(cls, path)
        elif path.is_file():
            model = _load_official(cls, path, mode, config, **overrides)
        elif looks_like_repo_id(str(name_or_path)):
            model = _load_directory(
                cls, download_weights(str(name_or_path), revision, cache_dir, token, local_files_only)
            )
        else:
            raise UnknownModelError(
                f"{name_or_path!r} is neither a directory written by save_pretrained, an authors' fine-tuning "
                "checkpoint file, nor a hub repository id ('owner/name')"
            )
        if mode is not None and canonical_mode(mode) != model.config.mode:
            raise CheckpointError(f"{name_or_path}: holds a {model.config.mode!r} classifier, not {mode!r}")
        if label_names is not None:
            names = (
                load_label_names(label_names) if isinstance(label_names, (str, Path)) else list(label_names)
            )
            model.set_label_names(names)
        if multi_label is not None:
            model.config.multi_label = bool(multi_label)
            model._hub_mixin_config = model.config.to_dict()
        model.eval()
        if device is not None:
            model.to(device)
        return model

    def set_label_names(self, names: Sequence[str]) -> None:
        """Attach class names (one per output, in order); they are saved with the model."""
        names = [str(n) for n in names]
        if len(names) != self.config.num_classes:
            raise InvalidInputError(
                f"got {len(names)} label names for a classifier with {self.config.num_classes} classes"
            )
        self.config.label_names = names
        self._hub_mixin_config = self.config.to_dict()


def _load_directory(cls, directory: Path) -> EquiAVClassifier:
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{directory}: expected {CONFIG_FILE} and {WEIGHTS_FILE} written by EquiAVClassifier.save_pretrained"
        )
    model = cls(ClassifierConfig.load(config_path))
    tensors = read_weights(weights_path)
    check_state_dict(model.state_dict(), tensors, str(weights_path))
    model.load_state_dict(tensors)
    return model


def _official_head(state: dict[str, torch.Tensor], source: str) -> tuple[str, int, int, int]:
    """(head type, input size, hidden size, classes) of the ``mlp_head`` tensors of an authors' checkpoint."""
    if "mlp_head.3.weight" in state:
        hidden, in_dim = state["mlp_head.0.weight"].shape
        return "mlp", in_dim, hidden, state["mlp_head.3.weight"].shape[0]
    if "mlp_head.0.weight" in state:
        classes, in_dim = state["mlp_head.0.weight"].shape
        return "linear", in_dim, 512, classes
    raise CheckpointError(f"{source}: not a fine-tuning checkpoint (no 'mlp_head.0.weight' tensor)")


def _load_official(
    cls, path: Path, mode: str | None, config: EquiAVConfig | str | dict | None, **overrides: Any
) -> EquiAVClassifier:
    """An authors' fine-tuning checkpoint: infer the sizes, pick the mode, drop the unused tower, load strictly."""
    state = clean_official_state_dict(read_checkpoint(path))
    head, in_dim, hidden, classes = _official_head(state, str(path))
    if "pred_a_inter.weight" not in state:
        raise CheckpointError(
            f"{path}: expected the fine-tuning projection 'pred_a_inter.weight' (inter_linear=True)"
        )
    if isinstance(config, str):
        config = EquiAVConfig.from_preset(config)
    elif isinstance(config, dict):
        config = EquiAVConfig.from_dict(config)
    inter_dim = state["pred_a_inter.weight"].shape[0]
    backbone = infer_config(state, base=config, inter_proj_dim=inter_dim, **overrides)
    sizes = {"audio_visual": 2 * inter_dim, "audio": inter_dim, "visual": backbone.embed_dim}
    if mode is None:
        candidates = [m for m, size in sizes.items() if size == in_dim]
        if len(candidates) != 1:
            raise CheckpointError(
                f"{path}: the head's input size {in_dim} fits modes {candidates or 'none'} "
                f"(audio_visual {sizes['audio_visual']}, audio {sizes['audio']}, visual {sizes['visual']}); "
                "pass mode='audio_visual', 'audio' or 'visual'"
            )
        mode = candidates[0]
    mode = canonical_mode(mode)
    if sizes[mode] != in_dim:
        raise CheckpointError(
            f"{path}: the head takes {in_dim} features, but mode {mode!r} gives {sizes[mode]}"
        )
    model = cls(
        ClassifierConfig(
            backbone=backbone,
            num_classes=classes,
            mode=mode,
            head=head,
            head_hidden_dim=hidden,
            multi_label=True,
        )
    )
    expected = model.state_dict()
    unused = _unused_official_keys(mode)
    kept = {k: v for k, v in state.items() if not k.startswith(unused)}
    check_state_dict(expected, kept, str(path))
    model.load_state_dict(kept)
    return model


def _unused_official_keys(mode: str) -> tuple[str, ...]:
    """Prefixes of the tensors that every authors' fine-tuning checkpoint holds but ``mode`` never reads."""
    visual = ("modality_v", "pos_embed_v", "patch_embed_v.", "blocks_v.", "norm_v.", "pred_v_inter.")
    audio = ("modality_a", "pos_embed_a", "patch_embed_a.", "blocks_a.", "norm_a.", "pred_a_inter.")
    if mode == "audio":
        return visual
    if mode == "visual":
        return audio + ("pred_v_inter.",)
    return ()


__all__ = [
    "ClassifierConfig",
    "EquiAVClassifier",
    "canonical_mode",
    "classification_head",
    "load_label_names",
    "read_label_file",
]
