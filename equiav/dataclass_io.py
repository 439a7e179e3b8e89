"""Building dataclass configs from JSON objects strictly: a misspelt or missing field is an error, not a default."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: Any, source: str, what: str = "config") -> T:
    """``cls(**data)`` for a dataclass ``cls``, with every problem raised as a ``ConfigError`` that starts with
    ``source`` (a file or a description) and names the fields: ``data`` not a dict, unknown fields (a typo would
    otherwise be ignored), required fields missing, and the errors of the constructor's own checks."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    declared = fields(cls)  # type: ignore[arg-type]
    known = sorted(f.name for f in declared)
    unknown = sorted(str(name) for name in set(data) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown {what} field(s) {unknown}; known fields are {known}")
    required = [f.name for f in declared if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{source}: missing {what} field(s) {missing}")
    try:
        return cls(**data)
    except (ConfigError, TypeError) as error:
        raise ConfigError(f"{source}: {error}") from error


__all__ = ["from_dict"]
