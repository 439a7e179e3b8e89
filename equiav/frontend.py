"""Turning the raw inputs that ``embed_*`` accepts into model inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import load_fbank, waveform_to_fbank
from .config import EquiAVConfig
from .errors import InvalidInputError


def audio_input_to_fbanks(
    item: Any, sample_rate: int | None, config: EquiAVConfig, windows: str
) -> torch.Tensor:
    """One audio file path, numpy array or tensor -> normalized filterbank windows (W, T, F); W = 1 with "crop"."""
    if isinstance(item, (str, Path)):
        fbank = load_fbank(item, config, windows=windows)
    elif isinstance(item, (np.ndarray, torch.Tensor)):
        fbank = waveform_to_fbank(item, sample_rate, config, windows=windows)
    else:
        raise InvalidInputError(
            f"audio input must be a file path, a numpy array or a torch.Tensor waveform, got {type(item).__name__}"
        )
    return fbank if windows == "sliding" else fbank.unsqueeze(0)


def audio_inputs_to_fbanks(
    items: list[Any], sample_rate: int | None, config: EquiAVConfig, windows: str = "crop"
) -> list[torch.Tensor]:
    """``audio_input_to_fbanks`` of every item."""
    return [audio_input_to_fbanks(item, sample_rate, config, windows) for item in items]
