"""Building dataclass configs from JSON objects strictly: a misspelt or missing field is an error, not a default."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

# How deeply a field's JSON value may nest lists and objects: deeper values exhaust Python's recursion limit when
# they are copied or written back (``dataclasses.asdict``, ``json.dumps``), long after they were read.
MAX_NESTING = 32


def nesting_depth(value: Any) -> int:
    """Levels of nested lists, tuples and dicts in ``value`` (0 for a scalar), found without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


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
    deep = sorted(str(name) for name, value in data.items() if nesting_depth(value) > MAX_NESTING)
    if deep:
        raise ConfigError(f"{source}: {what} field(s) {deep} nested more than {MAX_NESTING} levels deep")
    try:
        return cls(**data)
    except (ConfigError, TypeError) as error:
        raise ConfigError(f"{source}: {error}") from error


__all__ = ["MAX_NESTING", "from_dict", "nesting_depth"]
