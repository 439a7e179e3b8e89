"""Modules and names that moved keep working from their old import paths for one release, with a warning."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

# "old.module:name" -> "new.module:name"
MOVED = {
    "equiav.training.loop:ShardSampler": "equiav.training.sampler:RankSampler",
    "equiav.training.loop:Position": "equiav.training.resume:Position",
    "equiav.training.loop:TrainingState": "equiav.training.resume:TrainingState",
    "equiav.training.loop:autocast_context": "equiav.training.trainer:autocast_context",
    "equiav.training.launch:DistributedContext": "equiav.training.distributed:DistributedContext",
    "equiav.training.launch:setup_distributed": "equiav.training.distributed:setup_distributed",
    "equiav.training.launch:rng_state": "equiav.training.rng:rng_state",
    "equiav.training.launch:checkpoint_to_resume": "equiav.training.resume:checkpoint_to_resume",
    "equiav.training.data:build_pretrain_dataset": "equiav.training.datasets:build_dataset",
    "equiav.training.data:collate_pretrain": "equiav.training.datasets:collate_items",
    "equiav.training.data:AVDigitsDataset": "equiav.training.datasets:AVDigitsDataset",
    "equiav.training.finetune:spec_augment": "equiav.training.classification:spec_augment",
    "equiav.training.finetune:WeightedShardSampler": "equiav.training.sampler:WeightedRankSampler",
    "equiav.training.finetune:run_classify": "equiav.training.evaluate:run_classify",
    "equiav.training.metrics:shard": "equiav.training.distributed:shard",
}


def _resolve(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_old_path_warns_and_serves_the_same_object(old: str, new: str) -> None:
    module = old.split(":")[0]
    sys.modules.pop(module, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = _resolve(old)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(message.startswith(module) and " moved to " in message for message in messages), messages
    assert value is _resolve(new)


def test_a_name_that_never_existed_is_still_an_attribute_error() -> None:
    module = importlib.import_module("equiav.training.finetune")
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018
