"""Saving and loading weights: registered names, local directories, hub repositories and the authors' files.

The saved format is a directory with ``config.json`` (an ``EquiAVConfig``) and ``model.safetensors`` (the state dict
plus the model's fixed centroid views). Nothing in a weights directory or repository is ever executed: configs are
plain JSON, weights are safetensors or weights-only pickles.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .checks import all_finite
from .config import EquiAVConfig, list_models
from .errors import CheckpointError, ConfigError, InvalidInputError, UnknownModelError
from .state_dicts import (
    check_finite,
    check_state_dict,
    clean_official_state_dict,
    infer_config,
    is_finetune_state_dict,
    read_checkpoint_and_config,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VIEW_KEYS = ("audio_views", "visual_views")

logger = logging.getLogger(__name__)

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
    umask = os.umask(0)  # safetensors creates the file 0600; give it the mode config.json gets from the umask
    os.umask(umask)
    (directory / WEIGHTS_FILE).chmod(0o666 & ~umask)
    model.config.save(directory / CONFIG_FILE)


def _apply_weights(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    source: str,
    strict: bool,
    check_weights: bool = True,
) -> None:
    views = {k: tensors.pop(k) for k in VIEW_KEYS if k in tensors}
    expected = model.state_dict()
    if strict:
        check_state_dict(expected, tensors, source)
    else:
        tensors = {k: v for k, v in tensors.items() if k in expected and v.shape == expected[k].shape}
    if check_weights:
        check_finite(tensors, source)
    for key, value in views.items():
        _check_views(key, value, getattr(model, key), source)
    model.load_state_dict(tensors, strict=strict)
    for key, value in views.items():
        setattr(model, key, value.to(getattr(model, key)))


def _check_views(key: str, value: torch.Tensor, current: torch.Tensor, source: str) -> None:
    """Stored centroid views must be (S, d) with S >= 1, the model's d, and finite values (they are tiny)."""
    size = current.shape[-1]
    if value.dim() != 2 or value.shape[0] < 1:
        raise CheckpointError(
            f"{source}: '{key}' has shape {tuple(value.shape)}, expected (S, {size}) with at least one view"
        )
    if value.shape[-1] != size:
        raise CheckpointError(
            f"{source}: '{key}' has vectors of size {value.shape[-1]}, the model expects {size}"
        )
    if not value.is_floating_point() or not all_finite(value):
        raise CheckpointError(f"{source}: '{key}' holds NaN or infinite values (or is not floating-point)")


def _config_for(config: EquiAVConfig | str | dict | None) -> EquiAVConfig | None:
    if config is None or isinstance(config, EquiAVConfig):
        return config
    if isinstance(config, str):
        return EquiAVConfig.from_preset(config)
    return EquiAVConfig.from_dict(config)


def load_directory(
    cls,
    directory: Path,
    config: EquiAVConfig | None = None,
    strict: bool = True,
    check_weights: bool = True,
    **overrides: Any,
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
    _apply_weights(model, tensors, str(weights_path), strict, check_weights)
    return model


def load_official_checkpoint(
    cls,
    path: str | Path,
    config: EquiAVConfig | str | dict | None = None,
    strict: bool = True,
    backbone_only: bool = False,
    check_weights: bool = True,
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
    try:
        if base is None and stored_config is not None:
            base = EquiAVConfig.from_dict(stored_config, source="model_config")
        config = infer_config(state, base=base, **overrides)
    except (ConfigError, CheckpointError) as error:
        raise type(error)(f"{path}: {error}") from error
    model = cls(config)
    if backbone_only:
        prefixes = ("modality_", "pos_embed_", "patch_embed_", "blocks_", "norm_a.", "norm_v.")
        backbone = {k: v for k, v in state.items() if k.startswith(prefixes)}
        expected = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
        check_state_dict(expected, backbone, str(path))
        if check_weights:
            check_finite(backbone, str(path))
        model.load_state_dict(backbone, strict=False)
        return model
    _apply_weights(model, state, str(path), strict, check_weights)
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
    check_weights: bool = True,
    device: str | torch.device | None = None,
    map_location: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
):
    """Load weights into ``cls`` from, in this order of resolution:

    1. a registered name with packaged weights (``list_pretrained()``), given as a ``str``; a local folder of the
       same name does not shadow it (pass ``"./name"`` or a ``Path`` to load that folder),
    2. a local directory written by ``save_pretrained``,
    3. a local checkpoint file written by the authors' code (``.pth``/``.pt``/``.bin``, or ``.safetensors``),
    4. a hub repository id ``owner/name`` (``revision`` pins a branch, tag or commit).

    The source loaded is logged (``logging.INFO`` on the ``equiav.hub`` logger). ``config`` (preset name, dict or
    ``EquiAVConfig``) and keyword ``overrides`` fill in what a checkpoint file cannot tell (e.g. ``num_heads``).
    ``check_weights`` (default True) refuses weights holding NaN or infinite values, naming the tensors; pass False to
    skip that pass over the weights. The model is returned in eval mode, on ``device`` (``map_location``, as
    ``torch.load`` and the Hugging Face mixin call it, is the same) and in ``dtype`` if given.
    """
    device = _target_device(device, map_location)
    base = _config_for(config)
    options = dict(strict=strict, check_weights=check_weights, **overrides)
    name = str(name_or_path)
    path = Path(os.path.expanduser(name))
    if isinstance(name_or_path, str) and name in PRETRAINED:
        model = _load_registered(cls, name, path, base, options)
    elif path.is_dir():
        logger.info("loading %s from the local directory %s", cls.__name__, path)
        model = load_directory(cls, path, base, **options)
    elif path.is_file():
        logger.info("loading %s from the checkpoint file %s", cls.__name__, path)
        model = load_official_checkpoint(cls, path, base, backbone_only=backbone_only, **options)
    elif looks_like_repo_id(name):
        folder = download_weights(name, revision, cache_dir, token, local_files_only, force_download)
        logger.info("loading %s from hub repository %s (files in %s)", cls.__name__, name, folder)
        model = load_directory(cls, folder, base, **options)
    else:
        raise _unknown_name(name)
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _target_device(
    device: str | torch.device | None, map_location: str | torch.device | None
) -> torch.device | None:
    """The device to return the model on: ``device``, else ``map_location``; both given must agree."""
    for name, value in (("device", device), ("map_location", map_location)):
        if value is not None and not isinstance(value, (str, torch.device)):
            raise InvalidInputError(
                f"{name} must be a device name or torch.device (e.g. 'cpu', 'cuda:0'), got {type(value).__name__}"
            )
    try:
        chosen = [torch.device(value) for value in (device, map_location) if value is not None]
    except RuntimeError as error:
        raise InvalidInputError(f"device / map_location: {error}") from error
    if len(set(chosen)) > 1:
        raise InvalidInputError(
            f"device={device!r} and map_location={map_location!r} disagree; pass one of them"
        )
    return chosen[0] if chosen else None


def _load_registered(cls, name: str, path: Path, base: EquiAVConfig | None, options: dict[str, Any]):
    """The packaged weights of a registered name (a local path of the same name is not consulted)."""
    folder = _packaged_dir(name)
    if folder is None:
        raise UnknownModelError(f"the weights of {name!r} are not included in this installation of equiav")
    shadowed = (
        f"; the local path {path} of the same name was not loaded (pass './{name}' for it)"
        if path.exists()
        else ""
    )
    logger.info(
        "loading %s from the registered model %r (packaged in %s)%s", cls.__name__, name, folder, shadowed
    )
    return load_directory(cls, folder, base, **options)


def _unknown_name(name: str) -> UnknownModelError:
    if name in list_models():
        return UnknownModelError(
            f"{name!r} is an architecture preset without packaged weights. Use EquiAVModel({name!r}) for a randomly "
            f"initialized model, or convert the authors' checkpoint with `equiav convert`. Packaged weights: "
            f"{', '.join(list_pretrained()) or 'none'}"
        )
    return UnknownModelError(
        f"{name!r} is not a registered model, an existing file or directory, or a hub repository id "
        f"('owner/name'); registered: {', '.join(list_pretrained()) or 'none'}; presets: {', '.join(list_models())}"
    )


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
