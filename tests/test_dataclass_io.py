"""Strict dict -> dataclass config building, shared by every config class."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from equiav.classifier import ClassifierConfig
from equiav.config import EquiAVConfig
from equiav.dataclass_io import from_dict
from equiav.errors import ConfigError
from equiav.training.datasets.config import DataConfig


@dataclass
class Settings:
    name: str
    size: int = 1
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"field 'size' must be positive, got {self.size}")


def test_builds_the_dataclass() -> None:
    assert from_dict(Settings, {"name": "a", "size": 3}, "s.json") == Settings("a", 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "a", "colour": "red"}, r"^s\.json: unknown config field\(s\) \['colour'\]; known fields are \['name', 'size', 'tags'\]"),
        ({"size": 2}, r"^s\.json: missing config field\(s\) \['name'\]$"),
        ([1, 2], r"^s\.json: expected a JSON object, got list$"),
        ({"name": "a", "size": 0}, r"^s\.json: field 'size' must be positive, got 0$"),
    ],
)  # fmt: skip
def test_every_problem_is_a_config_error_naming_the_source_and_field(data, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(Settings, data, "s.json")


def test_the_library_and_training_configs_use_it() -> None:
    with pytest.raises(ConfigError, match=r"cfg\.json: unknown config field\(s\) \['depht'\]"):
        EquiAVConfig.from_dict({"depht": 2}, source="cfg.json")
    backbone = EquiAVConfig.from_preset("equiav-tiny").to_dict()
    with pytest.raises(ConfigError, match=r"unknown classifier config field\(s\) \['classes'\]"):
        ClassifierConfig.from_dict({"backbone": backbone, "classes": 3})
    with pytest.raises(ConfigError, match=r"missing classifier config field\(s\) \['num_classes'\]"):
        ClassifierConfig.from_dict({"backbone": backbone})
    assert ClassifierConfig.from_dict({"backbone": backbone, "num_classes": 3}).num_classes == 3
    with pytest.raises(ConfigError, match=r"data config: unknown config field\(s\) \['pth'\]"):
        DataConfig.from_dict({"kind": "manifest", "pth": "x.json"})
    assert DataConfig.from_dict({"kind": "manifest", "path": "x.json"}).path == "x.json"
