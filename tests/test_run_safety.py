"""A run never loses checkpoints to pruning, never silently continues or replaces another run, and refuses bad paths."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equiav.errors import ConfigError
from equiav.training.checkpoint import (
    LATEST_FILE,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from equiav.training.pretrain import config_from_args, train
from equiav.training.resume import RESUME_ENTRIES
from equiav.training.trainer import KILL_AT_STEP_ENV, KILL_RANK_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((2,), float(step))}, "position": {"epoch": 0}}


def _steps(directory: Path) -> list[int]:
    return [step for step, _ in list_checkpoints(directory)]


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    """A damaged checkpoint of a later step (another run's) used to outrank every new one, so keep-last deleted each
    new checkpoint right after writing it and ``latest`` named a missing file."""
    (tmp_path / "ckpt-00000006.pt").write_bytes(b"not a checkpoint")
    for step in range(1, 5):
        written = save_checkpoint(tmp_path, step, _state(step), keep_last=1)
        assert written.is_file()
        latest = tmp_path / (tmp_path / LATEST_FILE).read_text().strip()
        assert latest == written and load_checkpoint(latest)["step"] == step
    assert _steps(tmp_path) == [4, 6]
    path, state = find_latest_checkpoint(tmp_path)
    assert path.name == "ckpt-00000004.pt" and state["step"] == 4


def test_keep_last_keeps_the_newest_of_this_run(tmp_path: Path) -> None:
    for step in (3, 6, 9, 12):
        save_checkpoint(tmp_path, step, _state(step), keep_last=3)
    assert _steps(tmp_path) == [6, 9, 12]


def test_checkpoint_without_model_is_skipped_like_a_damaged_one(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 5, _state(5))
    torch.save({"step": 99}, tmp_path / "ckpt-00000099.pt")
    path, state = find_latest_checkpoint(tmp_path)
    assert path.name == "ckpt-00000005.pt" and state["step"] == 5
    assert find_latest_checkpoint(tmp_path, required=RESUME_ENTRIES) is None


def _args(shared_dir: Path, output: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--data.kind", "avdigits", "--data.path", str(shared_dir / "data"), "--output-dir", str(output),
        "--max-steps", str(steps), "--batch-size", "4", "--num-workers", "0", "--val-batches", "1",
        "--device", "cpu", "--data.num-views", "2", "--model-overrides", '{"depth": 1}', "--no-zero-shot-eval",
        "--no-progress", "--no-tensorboard", "--checkpoint-every-steps", "1", *extra,
    ]  # fmt: skip


def _train(args: list[str]) -> dict:
    return train(config_from_args(args)[0])


def test_fresh_start_refuses_another_runs_checkpoints_then_moves_them_aside(
    shared_dir: Path, tmp_path: Path, one_thread, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    _train(_args(shared_dir, out, 3, "--seed", "1", "--keep-last", "2"))
    assert _steps(out / "checkpoints") == [2, 3]
    with pytest.raises(ConfigError, match=r"holds checkpoints of another run .*--overwrite"):
        _train(_args(shared_dir, out, 2, "--seed", "7", "--resume", "none", "--keep-last", "2"))
    assert _steps(out / "checkpoints") == [2, 3]  # nothing touched

    with caplog.at_level(logging.WARNING):
        result = _train(_args(shared_dir, out, 2, "--seed", "7", "--resume", "none", "--overwrite"))
    assert result["step"] == 2 and "moved the checkpoints" in caplog.text
    (aside,) = (out / "checkpoints").glob("replaced-*")
    assert _steps(aside) == [2, 3] and (aside / LATEST_FILE).read_text().strip() == "ckpt-00000003.pt"
    assert load_checkpoint(out / "checkpoints" / "ckpt-00000002.pt")["config"]["seed"] == 7

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _train(_args(shared_dir, out, 3, "--seed", "1"))  # resumes the seed-7 run, and says the seed differs
    assert "seed: 7 -> 1" in caplog.text


def test_killed_run_beside_a_damaged_checkpoint_resumes_from_its_own(
    shared_dir: Path, tmp_path: Path
) -> None:
    """The issue's data-loss case: a damaged ``ckpt-00000006.pt`` in the folder, a run with ``--keep-last 1``
    killed at step 4, then ``--resume auto``."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "ckpt-00000006.pt").write_bytes(b"damaged")
    args = _args(shared_dir, out, 6, "--keep-last", "1")
    with pytest.raises(ConfigError, match="ckpt-00000006.pt"):
        _train(args)

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), KILL_AT_STEP_ENV: "4", "OMP_NUM_THREADS": "1"}
    env.pop(KILL_RANK_ENV, None)
    killed = subprocess.run(
        [sys.executable, "-m", "equiav.training.pretrain", *args, "--overwrite"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoints = out / "checkpoints"
    assert _steps(checkpoints) == [3]
    assert (checkpoints / LATEST_FILE).read_text().strip() == "ckpt-00000003.pt"

    result = _train(args)
    assert result["step"] == 6 and _steps(checkpoints) == [6]
    assert load_checkpoint(checkpoints / "ckpt-00000006.pt")["position"]["batch_in_epoch"] == 6


def test_unwritable_output_folder_fails_before_anything_is_built(shared_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"--output-dir: cannot write to .*a-file/run"):
        _train(_args(shared_dir, blocker / "run", 1))


def test_data_path_naming_a_fifo_is_refused_instead_of_blocking(tmp_path: Path) -> None:
    from equiav.config import EquiAVConfig
    from equiav.training.datasets import DataConfig, build_dataset

    fifo = tmp_path / "manifest.json"
    os.mkfifo(fifo)
    with pytest.raises(
        ConfigError, match=r"--data\.path: .*manifest\.json is not a regular file or a directory"
    ):
        build_dataset(
            DataConfig(kind="manifest", path=str(fifo)), EquiAVConfig.from_preset("equiav-test"), "train"
        )
