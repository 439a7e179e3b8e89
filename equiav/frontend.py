"""Deprecated: the raw-audio helpers moved to ``equiav.audio``; this module re-exports them for one release."""

from __future__ import annotations

import warnings

from .audio import audio_input_to_fbanks, audio_inputs_to_fbanks

warnings.warn(
    "equiav.frontend is deprecated; import audio_input_to_fbanks and audio_inputs_to_fbanks from equiav.audio",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["audio_input_to_fbanks", "audio_inputs_to_fbanks"]
