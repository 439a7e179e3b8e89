"""Label files: the class list of a classifier or a labelled data set, in class-index order.

Two formats are read:

* a CSV with a header row that names at least one of ``index``, ``mid`` and ``display_name`` (AudioSet's and
  VGGSound's ``class_labels_indices.csv``: ``index, mid, display_name``). An ``index`` column orders the classes and
  must number them 0 .. C-1, each once; ``mid`` values must be non-empty and unique. A class's id is its ``mid`` (else
  its name) and its name its ``display_name`` (else its id);
* plain text, one class name per line (the name is also the id).

Header names are matched without case or surrounding spaces, blank lines are skipped and a UTF-8 byte-order mark is
ignored. Every problem raises ``ConfigError`` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

CSV_COLUMNS = ("index", "mid", "display_name")


@dataclass(frozen=True)
class LabelTable:
    """The classes of a label file: ``ids[i]`` and ``names[i]`` describe class ``i``."""

    ids: list[str]
    names: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def index_of(self) -> dict[str, int]:
        """Class index of every id."""
        return {label_id: index for index, label_id in enumerate(self.ids)}


def read_label_table(path: str | Path, required_columns: Sequence[str] = ()) -> LabelTable:
    """The classes of a label file (see the module docstring); ``required_columns`` makes it a CSV with those."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read label file ({error})") from error
    try:
        rows = [
            (reader_line, row) for reader_line, row in _csv_rows(text) if any(cell.strip() for cell in row)
        ]
    except csv.Error as error:
        raise ConfigError(f"{path}: not a readable label CSV ({error})") from error
    if not rows:
        raise ConfigError(f"{path}: label file is empty")
    header = [cell.strip().lower() for cell in rows[0][1]]
    missing = [column for column in required_columns if column not in header]
    if missing:
        wanted = " and ".join(repr(column) for column in required_columns)
        raise ConfigError(f"{path}: label CSV needs a header with the columns {wanted}")
    if not any(column in header for column in CSV_COLUMNS):
        names = [line.strip() for line in text.splitlines() if line.strip()]
        return LabelTable(ids=names, names=names, source=str(path))
    return _csv_table(path, header, rows[1:])


def read_label_file(path: str | Path) -> tuple[list[str], list[str]]:
    """``(ids, names)`` of a label file, in class-index order."""
    table = read_label_table(path)
    return table.ids, table.names


def load_label_names(path: str | Path) -> list[str]:
    """Class names of a label file, in class-index order."""
    return read_label_table(path).names


def _csv_rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every CSV record; a quoted field may span lines."""
    reader = csv.reader(io.StringIO(text))
    return [(reader.line_num, row) for row in reader]


def _csv_table(path: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> LabelTable:
    classes: list[tuple[int, str, str]] = []
    seen_ids: set[str] = set()
    for position, (line, cells) in enumerate(rows):
        row = {column: (cells[k].strip() if k < len(cells) else "") for k, column in enumerate(header)}
        index = position
        if "index" in row:
            try:
                index = int(row["index"])
            except ValueError:
                raise ConfigError(
                    f"{path}, line {line}: 'index' must be an integer, got {row['index']!r}"
                ) from None
        if "mid" in row:
            if not row["mid"] or row["mid"] in seen_ids:
                raise ConfigError(f"{path}, line {line}: needs a new, non-empty mid, got {row['mid']!r}")
            seen_ids.add(row["mid"])
        label_id = row.get("mid") or row.get("display_name", "")
        if not label_id:
            raise ConfigError(f"{path}, line {line}: the class has neither a mid nor a display_name")
        name = row.get("display_name") or label_id
        classes.append((index, label_id, name))
    classes.sort(key=lambda entry: entry[0])
    if [index for index, _, _ in classes] != list(range(len(classes))):
        raise ConfigError(
            f"{path}: the 'index' column must number the classes 0..{len(classes) - 1}, each once"
        )
    return LabelTable(
        ids=[label_id for _, label_id, _ in classes],
        names=[name for _, _, name in classes],
        source=str(path),
    )


__all__ = ["LabelTable", "load_label_names", "read_label_file", "read_label_table"]
