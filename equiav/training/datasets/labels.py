"""Class labels: the authors' ``class_labels_indices.csv`` and the multi-hot vectors built from it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ...errors import ConfigError, DatasetError
from ...labels import read_label_table


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
        try:
            table = read_label_table(path, required_columns=("index", "mid"))
        except ConfigError as error:
            raise DatasetError(str(error)) from error
        return cls(table.index_of(), table.names, table.source)

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
