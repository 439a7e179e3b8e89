"""Old import paths that keep working for one release, with a ``DeprecationWarning`` that names the new one."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def warn_moved(old: str, new: str) -> None:
    """Warn that ``old`` (a module or ``module.name``) now lives at ``new``."""
    warnings.warn(
        f"{old} moved to {new}; the old path will be removed in the next release",
        DeprecationWarning,
        stacklevel=3,
    )


def moved_names(module: str, targets: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` serving each old name of ``targets`` from its new home, given as
    ``"package.module"`` (same name) or ``"package.module:new_name"``."""

    def __getattr__(name: str) -> Any:
        if name not in targets:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, _, new_name = targets[name].partition(":")
        new_name = new_name or name
        warn_moved(f"{module}.{name}", f"{new_module}.{new_name}")
        return getattr(importlib.import_module(new_module), new_name)

    return __getattr__
