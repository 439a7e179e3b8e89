"""The label-file parser shared by classifiers and labelled data sets."""

from __future__ import annotations

import pytest

from equiav.errors import ConfigError, DatasetError
from equiav.labels import LabelTable, load_label_names, read_label_file, read_label_table
from equiav.training.datasets.labels import LabelSpace


def test_csv_is_ordered_by_index_and_keeps_quoted_commas(tmp_path) -> None:
    path = tmp_path / "class_labels_indices.csv"
    path.write_text('\ufeffIndex, MID ,display_name\n1,/m/b,"Dog, bark"\n\n0,/m/a,Speech\n', encoding="utf-8")
    table = read_label_table(path)
    assert table == LabelTable(ids=["/m/a", "/m/b"], names=["Speech", "Dog, bark"], source=str(path))
    assert table.num_classes == 2 and table.index_of() == {"/m/a": 0, "/m/b": 1}
    assert read_label_file(path) == (["/m/a", "/m/b"], ["Speech", "Dog, bark"])


def test_csv_without_names_or_ids_falls_back_to_the_other_column(tmp_path) -> None:
    ids_only = tmp_path / "ids.csv"
    ids_only.write_text("index,mid\n0,/m/x\n1,/m/y\n")
    assert read_label_file(ids_only) == (["/m/x", "/m/y"], ["/m/x", "/m/y"])
    names_only = tmp_path / "names.csv"
    names_only.write_text("display_name\ncat\ndog\n")
    assert read_label_file(names_only) == (["cat", "dog"], ["cat", "dog"])


def test_plain_text_is_one_name_per_line(tmp_path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("zero\n  one, two  \n\n")
    assert load_label_names(path) == ["zero", "one, two"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"names\.csv: label file is empty"),
        ("index,mid\nx,/m/a\n", r"names\.csv, line 2: 'index' must be an integer, got 'x'"),
        ("index,mid\n0,/m/a\n1,/m/a\n", r"names\.csv, line 3: needs a new, non-empty mid"),
        ("index,mid\n0,/m/a\n2,/m/b\n", r"names\.csv: the 'index' column must number the classes 0\.\.1"),
        ("index,mid\n0,/m/a\n0,/m/b\n", r"the 'index' column must number the classes"),
        ("index,display_name\n0,\n", r"names\.csv, line 2: the class has neither a mid nor a display_name"),
    ],
)
def test_bad_label_files_name_the_file_and_line(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "names.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_label_table(path)


def test_missing_file_and_required_columns(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.csv: cannot read label file"):
        read_label_table(tmp_path / "missing.csv")
    path = tmp_path / "labels.csv"
    path.write_text("id,name\n0,dog\n")
    with pytest.raises(ConfigError, match=r"needs a header with the columns 'index' and 'mid'"):
        read_label_table(path, required_columns=("index", "mid"))


def test_label_space_reads_through_the_shared_parser(tmp_path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("index,mid,display_name\n1,/m/dog,Dog\n0,/m/cat,Cat\n")
    space = LabelSpace.from_csv(path)
    assert space.indices == {"/m/cat": 0, "/m/dog": 1} and space.names == ["Cat", "Dog"]
    assert space.encode("/m/dog, /m/cat", "clip") == [0, 1]
    path.write_text("index,display_name\n0,Dog\n")
    with pytest.raises(DatasetError, match="'index' and 'mid'"):
        LabelSpace.from_csv(path)
