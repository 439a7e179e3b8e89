"""Typed errors raised by equiav.

Every error names the file, field or argument that was wrong and what was expected, so a user can fix the input
without reading the library's source. Each class also derives from the built-in exception that fits
(``ValueError`` for bad values, ``OSError`` for unreadable files, ``KeyError``-free lookups), so existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations


class EquiAVError(Exception):
    """Base class of every error raised on purpose by equiav."""


class InvalidInputError(EquiAVError, ValueError):
    """An array, tensor or argument has the wrong shape, dtype, range or value."""


class AudioDecodeError(EquiAVError, OSError):
    """An audio file is missing, empty, truncated or not audio."""


class ImageDecodeError(EquiAVError, OSError):
    """An image file is missing, truncated or not an image."""


class VideoDecodeError(EquiAVError, OSError):
    """A video file is missing, has no usable audio or video stream, or cannot be decoded."""


class UnknownModelError(EquiAVError, ValueError):
    """A model name is neither a registered preset nor a local path nor a hub repository."""


class ConfigError(EquiAVError, ValueError):
    """A configuration file or dictionary is malformed or has unknown or invalid fields."""


class CheckpointError(EquiAVError, ValueError):
    """A weights file has missing, unexpected or mis-shaped tensors, or an unsupported format."""


class DatasetError(EquiAVError, ValueError):
    """A manifest is malformed, or too many of its items could not be read."""


class StorageError(EquiAVError, OSError):
    """A local path, URL, object-store location or ``pipe:`` command cannot be reached, read or written."""


class IndexMismatchError(EquiAVError, ValueError):
    """A search index and a query disagree: another model, embedding size or modality."""
