"""Modules and names that moved keep working from their old import paths for one release, with a warning."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize(
    ("old_module", "name", "new_module", "new_name"),
    [
        ("equiav.training.loop", "ShardSampler", "equiav.training.sampler", "RankSampler"),
        ("equiav.training.loop", "Position", "equiav.training.resume", "Position"),
        ("equiav.training.loop", "TrainingState", "equiav.training.resume", "TrainingState"),
        ("equiav.training.loop", "autocast_context", "equiav.training.trainer", "autocast_context"),
        ("equiav.training.launch", "DistributedContext", "equiav.training.distributed", "DistributedContext"),
        ("equiav.training.launch", "setup_distributed", "equiav.training.distributed", "setup_distributed"),
        ("equiav.training.launch", "rng_state", "equiav.training.rng", "rng_state"),
        ("equiav.training.launch", "checkpoint_to_resume", "equiav.training.resume", "checkpoint_to_resume"),
        ("equiav.training.data", "build_pretrain_dataset", "equiav.training.datasets", "build_dataset"),
        ("equiav.training.data", "collate_pretrain", "equiav.training.datasets", "collate_items"),
        ("equiav.training.data", "AVDigitsDataset", "equiav.training.datasets", "AVDigitsDataset"),
    ],
)
def test_moved_module_warns_and_serves_the_same_object(old_module, name, new_module, new_name) -> None:
    sys.modules.pop(old_module, None)
    with pytest.warns(DeprecationWarning, match=f"{old_module} moved to"):
        old = importlib.import_module(old_module)
    assert getattr(old, name) is getattr(importlib.import_module(new_module), new_name)


@pytest.mark.parametrize(
    ("old_module", "name", "new_module", "new_name"),
    [
        ("equiav.training.finetune", "spec_augment", "equiav.training.classification", "spec_augment"),
        (
            "equiav.training.finetune",
            "WeightedShardSampler",
            "equiav.training.sampler",
            "WeightedRankSampler",
        ),
        ("equiav.training.finetune", "run_classify", "equiav.training.evaluate", "run_classify"),
        ("equiav.training.metrics", "shard", "equiav.training.distributed", "shard"),
    ],
)
def test_moved_name_warns_and_serves_the_same_object(old_module, name, new_module, new_name) -> None:
    module = importlib.import_module(old_module)
    with pytest.warns(DeprecationWarning, match=rf"{old_module}\.{name} moved to {new_module}\.{new_name}"):
        old = getattr(module, name)
    assert old is getattr(importlib.import_module(new_module), new_name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018
