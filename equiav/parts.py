"""Jobs split into independent parts (a job array, several nodes, torchrun ranks) that write shards, resume, merge.

``total`` items are split into ``num_parts`` contiguous ranges, and each range into shards of ``shard_size`` items
numbered across all parts, so a shard's number and items depend only on (total, num_parts, shard_size), never on
which machine wrote it or when. Each part keeps a ledger ``parts/part-IIIII-of-NNNNN.json`` in the output folder that
lists its finished shards (rewritten after each one), so a part that is killed and started again skips them. The
part that finishes last (it finds every ledger complete) merges them into the index; parts need no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, InvalidInputError
from .storage import Folder

LEDGER_FOLDER = "parts"


@dataclass(frozen=True)
class ShardSpan:
    """Shard ``number`` holds the items ``start`` .. ``stop - 1`` (those that could be read)."""

    number: int
    start: int
    stop: int


@dataclass(frozen=True)
class PartPlan:
    """Which items and shards each of ``num_parts`` parts writes."""

    total: int
    num_parts: int
    shard_size: int

    def __post_init__(self) -> None:
        for name in ("num_parts", "shard_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if self.total < 0:
            raise InvalidInputError(f"total must be >= 0, got {self.total}")

    def items(self, part: int) -> range:
        """The items of ``part``: a contiguous range, sizes differing by at most one."""
        return range(self.total * part // self.num_parts, self.total * (part + 1) // self.num_parts)

    def _shard_count(self, part: int) -> int:
        return -(-len(self.items(part)) // self.shard_size)

    def shards(self, part: int) -> list[ShardSpan]:
        """The shards ``part`` writes, numbered after those of the parts before it."""
        first = sum(self._shard_count(p) for p in range(part))
        items = self.items(part)
        return [
            ShardSpan(
                first + k,
                items.start + k * self.shard_size,
                min(items.start + (k + 1) * self.shard_size, items.stop),
            )
            for k in range(self._shard_count(part))
        ]


def part_from_env(part: int | None, num_parts: int | None) -> tuple[int, int]:
    """(part, num_parts): the given ones, else torchrun's ``RANK`` / ``WORLD_SIZE``, else (0, 1)."""
    if part is None and num_parts is None:
        part, num_parts = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if part is None or num_parts is None:
        raise ConfigError("give both --part and --num-parts (or neither)")
    if not 0 <= part < num_parts:
        raise ConfigError(f"--part must be in [0, --num-parts), got part {part} of {num_parts}")
    return part, num_parts


def _ledger_name(part: int, num_parts: int) -> str:
    return f"{LEDGER_FOLDER}/part-{part:05d}-of-{num_parts:05d}.json"


class PartLedger:
    """The finished shards of one part, kept in the output folder; refuses a folder written with other settings.

    ``settings`` is everything that decides the shards' content (input, model settings, plan); a part resumed
    with different ones would mix two datasets, so it is refused, naming the fields that differ.
    """

    def __init__(self, folder: Folder, plan: PartPlan, part: int, settings: dict[str, Any]) -> None:
        self.folder, self.plan, self.part = folder, plan, part
        self.settings = {
            **settings,
            "total": plan.total,
            "num_parts": plan.num_parts,
            "shard_size": plan.shard_size,
        }
        self.name = _ledger_name(part, plan.num_parts)
        self.shards: dict[int, dict[str, Any]] = {}
        self.bad: list[dict[str, Any]] = []
        if folder.exists(self.name):
            state = folder.read_json(self.name)
            check_settings(folder.url(self.name), state.get("settings", {}), self.settings)
            for entry in state.get("shards", []):
                if folder.exists(entry["file"]):
                    self.shards[entry["number"]] = entry
                    self.bad += entry.get("bad", [])

    def pending(self) -> list[ShardSpan]:
        """The shards of this part not written yet."""
        return [span for span in self.plan.shards(self.part) if span.number not in self.shards]

    def record(self, span: ShardSpan, file: str, count: int, bad: list[dict[str, Any]]) -> None:
        """Note a finished shard (after its file is in place)."""
        entry = {"number": span.number, "file": file, "count": count, "start": span.start, "stop": span.stop}
        self.shards[span.number] = {**entry, "bad": bad}
        self.bad += bad
        self._save(done=False)

    def finish(self) -> None:
        self._save(done=True)

    def _save(self, done: bool) -> None:
        shards = [self.shards[number] for number in sorted(self.shards)]
        self.folder.write_json(self.name, {"settings": self.settings, "done": done, "shards": shards})


def check_settings(where: str, stored: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse to continue a job whose stored settings differ from this one's, naming the fields."""
    different = sorted(key for key in expected.keys() | stored.keys() if stored.get(key) != expected.get(key))
    if different:
        described = ", ".join(
            f"{key} {stored.get(key)!r} (stored) vs {expected.get(key)!r} (now)" for key in different
        )
        raise ConfigError(
            f"{where}: this output was started with other settings: {described}; use another output folder"
        )


def merged(
    folder: Folder, plan: PartPlan, settings: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict]] | None:
    """(shard entries in order, bad items) of all parts once every part is done, else None."""
    expected = {**settings, "total": plan.total, "num_parts": plan.num_parts, "shard_size": plan.shard_size}
    shards, bad = [], []
    for part in range(plan.num_parts):
        name = _ledger_name(part, plan.num_parts)
        if not folder.exists(name):
            return None
        state = folder.read_json(name)
        check_settings(folder.url(name), state.get("settings", {}), expected)
        if not state.get("done"):
            return None
        for entry in state["shards"]:
            bad += entry.pop("bad", [])
            shards.append(entry)
    return sorted(shards, key=lambda entry: entry["number"]), bad
