"""Loading the model an evaluation scores: one path for the retrieval, the probe and the classifier commands."""

from __future__ import annotations

import torch

from ..config import EquiAVConfig, list_models
from ..errors import InvalidInputError
from ..model import EquiAVModel


def load_backbone(
    name: str,
    *,
    random_init: bool = False,
    seed: int = 0,
    preset: str | None = None,
    num_heads: int | None = None,
) -> torch.nn.Module:
    """An ``EquiAVModel`` in eval mode: from a name, directory, hub repository or authors' checkpoint, or, with
    ``random_init``, a freshly initialized preset (seeded), as a chance-level reference."""
    if random_init:
        if name not in list_models():
            raise InvalidInputError(
                f"--random-init needs a preset name ({', '.join(list_models())}), got {name!r}"
            )
        torch.manual_seed(seed)
        return EquiAVModel(EquiAVConfig.from_preset(name)).eval()
    overrides = {"num_heads": num_heads} if num_heads else {}
    return EquiAVModel.from_pretrained(name, config=preset, **overrides).eval()
