"""Class labels: the authors' ``class_labels_indices.csv`` and the multi-hot vectors built from it."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import Tensor

from ...errors import DatasetError


class LabelSpace:
    """Maps label ids (AudioSet / VGGSound ``mid`` strings) to class indices.

    The CSV has a header row with at least the columns ``index`` and ``mid`` (``display_name`` is kept for
    reference); indices must be unique and cover 0 .. C-1.
    """

    def __init__(self, indices: dict[str, int], names: list[str], source: str) -> None:
        self.indices = indices
        self.names = names
        self.source = source

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def from_csv(cls, path: str | Path) -> LabelSpace:
        path = Path(path)
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise DatasetError(f"{path}: cannot read label CSV ({error})") from error
        if not rows or not {"index", "mid"} <= set(rows[0]):
            raise DatasetError(f"{path}: label CSV needs a header with the columns 'index' and 'mid'")
        indices: dict[str, int] = {}
        names: dict[int, str] = {}
        for line, row in enumerate(rows, start=2):
            mid = (row["mid"] or "").strip()
            try:
                index = int(row["index"])
            except (TypeError, ValueError):
                raise DatasetError(
                    f"{path}, line {line}: 'index' must be an integer, got {row['index']!r}"
                ) from None
            if not mid or mid in indices or index in names or index < 0:
                raise DatasetError(
                    f"{path}, line {line}: needs a new, non-empty mid and a new non-negative index, got "
                    f"mid {mid!r} and index {index}"
                )
            indices[mid] = index
            names[index] = (row.get("display_name") or mid).strip()
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{path}: class indices must cover 0 .. {len(names) - 1} without gaps")
        return cls(indices, [names[i] for i in range(len(names))], str(path))

    def encode(self, labels: str, where: str) -> list[int]:
        """Class indices of a comma-separated label string (empty string: no class)."""
        result = []
        for mid in (part.strip() for part in labels.split(",")):
            if not mid:
                continue
            if mid not in self.indices:
                raise DatasetError(f"{where}: label {mid!r} is not in the label CSV {self.source}")
            result.append(self.indices[mid])
        return sorted(set(result))

    def multi_hot(self, indices: list[int]) -> Tensor:
        vector = torch.zeros(self.num_classes, dtype=torch.float32)
        vector[indices] = 1.0
        return vector
