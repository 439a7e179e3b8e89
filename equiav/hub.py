"""Saving and loading weights: registered names, local directories, hub repositories and the authors' files.

The saved format is a directory with ``config.json`` (an ``EquiAVConfig``) and ``model.safetensors`` (the state dict
plus the model's fixed centroid views). Nothing in a weights directory or repository is ever executed: configs are
plain JSON, weights are safetensors or weights-only pickles.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import EquiAVConfig, list_models
from .errors import CheckpointError, ConfigError, UnknownModelError
from .state_dicts import (
    check_state_dict,
    clean_official_state_dict,
    infer_config,
    is_finetune_state_dict,
    read_checkpoint_and_config,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VIEW_KEYS = ("audio_views", "visual_views")

# Registered names with weights: each entry is a folder inside the installed package.
PRETRAINED: dict[str, str] = {
    "equiav-tiny-digits": "pretrained/equiav-tiny-digits",
}


def list_pretrained() -> list[str]:
    """Registered names whose weights ship with the package (loadable offline)."""
    return sorted(name for name in PRETRAINED if _packaged_dir(name) is not None)


def _packaged_dir(name: str) -> Path | None:
    folder = Path(str(resources.files("equiav") / PRETRAINED[name]))
    return folder if (folder / WEIGHTS_FILE).is_file() else None


def save_weights(model: torch.nn.Module, directory: Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` (state dict and centroid views) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    for key in VIEW_KEYS:
        if hasattr(model, key):
            tensors[key] = getattr(model, key).detach().contiguous().clone()
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "library": "equiav"})
    model.config.save(directory / CONFIG_FILE)


def _apply_weights(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str, strict: bool
) -> None:
    views = {k: tensors.pop(k) for k in VIEW_KEYS if k in tensors}
    expected = model.state_dict()
    if strict:
        check_state_dict(expected, tensors, source)
    else:
        tensors = {k: v for k, v in tensors.items() if k in expected and v.shape == expected[k].shape}
    model.load_state_dict(tensors, strict=strict)
    for key, value in views.items():
        current = getattr(model, key)
        if value.shape[-1] != current.shape[-1]:
            raise CheckpointError(
                f"{source}: '{key}' has vectors of size {value.shape[-1]}, the model expects {current.shape[-1]}"
            )
        setattr(model, key, value.to(current))


def _config_for(config: EquiAVConfig | str | dict | None) -> EquiAVConfig | None:
    if config is None or isinstance(config, EquiAVConfig):
        return config
    if isinstance(config, str):
        return EquiAVConfig.from_preset(config)
    return EquiAVConfig.from_dict(config)


def load_directory(
    cls, directory: Path, config: EquiAVConfig | None = None, strict: bool = True, **overrides
):
    """Load the saved format from a local directory."""
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if config is None:
        if not config_path.is_file():
            raise ConfigError(
                f"{directory}: no {CONFIG_FILE}; expected a directory written by save_pretrained"
            )
        config = EquiAVConfig.load(config_path)
    if overrides:
        config = config.replace(**overrides)
    if not weights_path.is_file():
        raise CheckpointError(
            f"{directory}: no {WEIGHTS_FILE}; expected a directory written by save_pretrained"
        )
    tensors = read_weights(weights_path)
    model = cls(config)
    _apply_weights(model, tensors, str(weights_path), strict)
    return model


def load_official_checkpoint(
    cls,
    path: str | Path,
    config: EquiAVConfig | str | dict | None = None,
    strict: bool = True,
    backbone_only: bool = False,
    **overrides: Any,
):
    """Build a model from a checkpoint written by the authors' pretraining (or, with ``backbone_only``, fine-tuning) code.

    A checkpoint of equiav's own trainer (``ckpt-*.pt``) also works: the model config stored in it is used when
    ``config`` is not given, so its preprocessing settings (mel bins, normalization, ...) come back too.

    The ``__M__.`` / ``module.`` prefixes are stripped and the never-used per-block LayerNorms are ignored. With
    ``strict`` every remaining tensor must match the model exactly. ``backbone_only`` loads the two towers and their
    final norms only (what a fine-tuning checkpoint holds) and leaves the rest as initialized.
    """
    raw, stored_config = read_checkpoint_and_config(path)
    state = clean_official_state_dict(raw)
    if is_finetune_state_dict(state) and not backbone_only:
        raise CheckpointError(
            f"{path}: this is a fine-tuning checkpoint (it has 'mlp_head.*' tensors and no transformation predictor); "
            "load it with equiav.EquiAVClassifier.from_pretrained, or pass backbone_only=True for the towers"
        )
    base = _config_for(config)
    if base is None and stored_config is not None:
        base = EquiAVConfig.from_dict(stored_config)
    config = infer_config(state, base=base, **overrides)
    model = cls(config)
    if backbone_only:
        prefixes = ("modality_", "pos_embed_", "patch_embed_", "blocks_", "norm_a.", "norm_v.")
        backbone = {k: v for k, v in state.items() if k.startswith(prefixes)}
        expected = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
        check_state_dict(expected, backbone, str(path))
        model.load_state_dict(backbone, strict=False)
        return model
    _apply_weights(model, state, str(path), strict)
    return model


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors`` file."""
    try:
        return load_file(str(path))
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub repository id, ``owner/name`` (and is not a relative path)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def load_model(
    cls,
    name_or_path: str | Path,
    *,
    config: EquiAVConfig | str | dict | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    strict: bool = True,
    backbone_only: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
):
    """Load weights into ``cls`` from, in this order of resolution:

    1. a registered name with packaged weights (``list_pretrained()``),
    2. a local directory written by ``save_pretrained``,
    3. a local checkpoint file written by the authors' code (``.pth``/``.pt``/``.bin``, or ``.safetensors``),
    4. a hub repository id ``owner/name`` (``revision`` pins a branch, tag or commit).

    ``config`` (preset name, dict or ``EquiAVConfig``) and keyword ``overrides`` fill in what a checkpoint file
    cannot tell (e.g. ``num_heads``). The model is returned in eval mode, on ``device`` and in ``dtype`` if given.
    """
    name = str(name_or_path)
    path = Path(os.path.expanduser(name))
    base = _config_for(config)
    if name in PRETRAINED and not path.exists():
        folder = _packaged_dir(name)
        if folder is None:
            raise UnknownModelError(
                f"the weights of {name!r} are not included in this installation of equiav"
            )
        model = load_directory(cls, folder, base, strict, **overrides)
    elif path.is_dir():
        model = load_directory(cls, path, base, strict, **overrides)
    elif path.is_file():
        model = load_official_checkpoint(cls, path, base, strict, backbone_only, **overrides)
    elif name in list_models():
        raise UnknownModelError(
            f"{name!r} is an architecture preset without packaged weights. Use EquiAVModel({name!r}) for a randomly "
            f"initialized model, or convert the authors' checkpoint with `equiav convert`. Packaged weights: "
            f"{', '.join(list_pretrained()) or 'none'}"
        )
    elif looks_like_repo_id(name):
        folder = download_weights(name, revision, cache_dir, token, local_files_only, force_download)
        model = load_directory(cls, folder, base, strict, **overrides)
    else:
        raise UnknownModelError(
            f"{name!r} is not a registered model, an existing file or directory, or a hub repository id "
            f"('owner/name'); registered: {', '.join(list_pretrained()) or 'none'}; presets: {', '.join(list_models())}"
        )
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def download_weights(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Path:
    """Fetch ``config.json`` and ``model.safetensors`` of a hub repository into the cache; returns their folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    kwargs = dict(
        repo_id=repo_id,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
    )
    try:
        config_path = hf_hub_download(filename=CONFIG_FILE, **kwargs)
        hf_hub_download(filename=WEIGHTS_FILE, **kwargs)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        raise UnknownModelError(
            f"could not fetch {CONFIG_FILE} and {WEIGHTS_FILE} of hub repository {repo_id!r}"
            f"{f' at revision {revision!r}' if revision else ''}: {error}"
        ) from error
    return Path(config_path).parent
