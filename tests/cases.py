"""The table-of-cases harness that tests/test_bad_inputs.py and tests/test_hostile_inputs.py share.

A case is ``(run, expected)``: ``run(ctx)`` does something with an input the case makes in its own folder, and
``expected`` says what must happen: ``Ok`` (a check of the result), ``Fails`` (a typed ``EquiAVError`` that is also
a ``ValueError`` / ``OSError``, whose message matches a pattern; ``{dir}`` stands for the case's folder) or
``Skipped`` (a ``BadItem`` naming the file).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from corpus import edit_json

from equiav import EquiAVError, EquiAVModel
from equiav.training.datasets import BadItem

RATE = 16000


@dataclass(frozen=True)
class Ok:
    check: Callable[[Any, Ctx], None]


@dataclass(frozen=True)
class Fails:
    error: type[EquiAVError]
    pattern: str


@dataclass(frozen=True)
class Skipped:
    pattern: str


@dataclass
class Ctx:
    """What a case may use: its own folder, the shared tiny model and a saved copy of its weights."""

    dir: Path
    model: EquiAVModel
    saved: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    def weights(self) -> Path:
        """A fresh copy of the saved model directory (config.json + model.safetensors) to damage."""
        return Path(shutil.copytree(self.saved, self.dir / "weights"))

    def embed_wave(self, signal: np.ndarray, rate: int = RATE) -> torch.Tensor:
        return self.model.embed_audio(signal, sample_rate=rate)


def expect(run: Callable[[], Any], expected: Ok | Fails | Skipped, ctx: Ctx) -> None:
    """Run a case and check that it did what ``expected`` says."""
    if isinstance(expected, Fails):
        with pytest.raises(EquiAVError) as caught:
            run()
        error = caught.value
        assert isinstance(error, expected.error), f"{type(error).__name__}: {error}"
        assert isinstance(error, (ValueError, OSError))
        wanted = expected.pattern.replace("{dir}", re.escape(str(ctx.dir)))
        assert re.search(wanted, str(error), re.DOTALL), f"message {str(error)!r} does not match {wanted!r}"
    elif isinstance(expected, Skipped):
        item = run()
        assert isinstance(item, BadItem), f"expected a BadItem, got {type(item).__name__}"
        assert re.search(expected.pattern, f"{item.path} {item.reason}"), item
    else:
        expected.check(run(), ctx)


def run_case(case: tuple[Callable[[Ctx], Any], Ok | Fails | Skipped], ctx: Ctx) -> None:
    """Run one ``(run, expected)`` case of a table in ``ctx``."""
    run, expected = case
    expect(lambda: run(ctx), expected, ctx)


def damaged_config(**changes: Any) -> Callable[[Ctx], Any]:
    """A case that loads the saved model after changing fields of its ``config.json``."""

    def run(ctx: Ctx) -> EquiAVModel:
        folder = ctx.weights()
        edit_json(folder / "config.json", **changes)
        return EquiAVModel.from_pretrained(folder)

    return run


def config_text(text: str | bytes) -> Callable[[Ctx], Any]:
    """A case that loads the saved model with ``text`` as its ``config.json``."""

    def run(ctx: Ctx) -> EquiAVModel:
        folder = ctx.weights()
        data = text.encode() if isinstance(text, str) else text
        (folder / "config.json").write_bytes(data)
        return EquiAVModel.from_pretrained(folder)

    return run
