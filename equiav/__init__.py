"""EquiAV: audio-visual contrastive learning with equivariance (ICML 2024), reference implementation and model zoo.

Quick start::

    import equiav
    model = equiav.EquiAVModel.from_pretrained("equiav-tiny-digits")
    audio = model.embed_audio("clip.wav")
    image = model.embed_image("photo.jpg")
    similarity = audio @ image.T
"""

from . import audio, image
from .classifier import ClassifierConfig, EquiAVClassifier
from .config import EquiAVConfig, list_models
from .errors import (
    AudioDecodeError,
    CheckpointError,
    ConfigError,
    DatasetError,
    EquiAVError,
    ImageDecodeError,
    InvalidInputError,
    UnknownModelError,
    VideoDecodeError,
)
from .hub import list_pretrained
from .model import EquiAVModel, EquiAVOutput, VideoEmbedding

__version__ = "0.1.0"

__all__ = [
    "audio",
    "image",
    "AudioDecodeError",
    "ClassifierConfig",
    "EquiAVClassifier",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "EquiAVConfig",
    "EquiAVError",
    "EquiAVModel",
    "EquiAVOutput",
    "ImageDecodeError",
    "InvalidInputError",
    "UnknownModelError",
    "VideoDecodeError",
    "VideoEmbedding",
    "list_models",
    "list_pretrained",
]
