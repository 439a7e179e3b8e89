"""Tests of the pretraining loop: config and CLI, schedule, checkpoints, exact resume, DDP, and that it learns."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from equiav import EquiAVModel
from equiav.errors import CheckpointError, ConfigError, DatasetError
from equiav.training.checkpoint import (
    LATEST_FILE,
    clean_temporary_files,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from equiav.training.options import build_config
from equiav.training.pretrain import PretrainConfig, build_parser, config_from_args
from equiav.training.rng import rng_state, set_rng_state
from equiav.training.sampler import RankSampler
from equiav.training.schedule import WarmupCosineSchedule, warmup_cosine_lr
from equiav.training.trainer import KILL_AT_STEP_ENV, KILL_RANK_ENV, fault_kill_step

REPO_ROOT = Path(__file__).resolve().parents[1]


def _leaf_options(cls: type, prefix: str = "") -> list[str]:
    """The command-line option of every non-dataclass field, nested ones included."""
    hints = get_type_hints(cls)
    options = []
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            options += _leaf_options(hints[f.name], f"{prefix}{f.name}.")
        else:
            options.append(f"--{prefix}{f.name}".replace("_", "-"))
    return options


def _run_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop(KILL_AT_STEP_ENV, None)
    env.pop(KILL_RANK_ENV, None)
    return env


def _pretrain(args: list[str], env: dict[str, str] | None = None, launcher: list[str] | None = None):
    command = (launcher or [sys.executable]) + ["-m", "equiav.training.pretrain", *args]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env or _run_env(), capture_output=True, text=True, timeout=600
    )


def _digits_args(shared_dir: Path, output: Path, steps: int, **extra: str) -> list[str]:
    args = {
        "--data.kind": "avdigits",
        "--data.path": str(shared_dir / "data"),
        "--output-dir": str(output),
        "--max-steps": str(steps),
        "--batch-size": "8",
        "--num-workers": "0",
        "--log-every": "1",
        "--val-batches": "1",
        "--device": "cpu",
        "--data.num-views": "4",
        "--optim.warmup-steps": "2",
        "--optim.lr": "1e-3",
    }
    args.update(extra)
    flat = [item for pair in args.items() for item in pair]
    return flat + ["--no-progress", "--no-tensorboard"]


def _metrics(output: Path, split: str = "train") -> list[dict]:
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


# ----------------------------------------------------------------------------------------------- config and CLI


def test_help_lists_every_option_with_a_description():
    text = build_parser().format_help()
    for option in _leaf_options(PretrainConfig):
        assert option in text, option
    for flag in ("--compile", "--no-compile", "--no-progress", "--no-data.roll-audio", "--config"):
        assert flag in text
    # Every option has real help text (from the dataclass docstrings), not just its name.
    for action in build_parser()._actions:
        if action.dest not in ("help", "config", "print_config"):
            assert action.help and len(action.help) > 25, action.dest
            assert "(default: " in action.help or "(required)" in action.help, action.dest


def test_help_runs_as_a_module():
    result = _pretrain(["--help"])
    assert result.returncode == 0, result.stderr
    assert "--optim.warmup-steps" in result.stdout and "--data.path" in result.stdout


def test_config_file_then_command_line_precedence(tmp_path):
    config = {
        "data": {"kind": "avdigits", "path": "/data", "num_views": 3},
        "batch_size": 7,
        "optim": {"lr": 0.5, "betas": [0.8, 0.9]},
        "compile": True,
        "model_overrides": {"depth": 2},
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    cfg, _ = config_from_args(
        ["--config", str(path), "--optim.lr", "0.25", "--no-compile", "--max-steps", "9",
         "--data.val-speakers", "george", "jackson", "--optim.warmup-steps", "none"]
    )  # fmt: skip
    assert cfg.optim.lr == 0.25  # command line beats the file
    assert cfg.batch_size == 7 and cfg.data.num_views == 3  # the file beats the defaults
    assert cfg.optim.betas == (0.8, 0.9) and cfg.optim.weight_decay == 1e-5  # untouched fields keep defaults
    assert cfg.compile is False and cfg.max_steps == 9 and cfg.optim.warmup_steps is None
    assert cfg.data.val_speakers == ("george", "jackson")
    assert cfg.model_config().depth == 2 and cfg.model_config().embed_dim == 128
    again, _ = config_from_args(["--config", str(path), "--compile"])
    assert again.compile is True


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        ({"data": {"kind": "avdigits", "path": "x"}, "batch_sise": 3}, [], "batch_sise"),
        ({"data": {"kind": "avdigits", "path": "x"}}, ["--batch-size", "many"], "--batch-size"),
        ({"data": {"kind": "avdigits", "path": "x"}, "optim": {"lr": "fast"}}, [], "--optim.lr"),
        ({"data": {"path": "x"}}, [], "--data.kind"),
        ({"data": {"kind": "avdigits", "path": "x"}, "model_overrides": {"depht": 1}}, [], "depht"),
        ({"data": {"kind": "avdigits", "path": "x"}}, ["--keep-last", "0"], "--keep-last"),
        (
            {"data": {"kind": "avdigits", "path": "x"}},
            ["--optim.warmup-steps", "-1"],
            "--optim.warmup-steps must",
        ),
        ({"data": {"kind": "avdigits", "path": "x"}}, ["--max-steps", "0"], "--max-steps must be at least 1"),
        ({"data": {"kind": "avdigits", "path": "x"}}, ["--epochs", "0"], "--epochs must be positive"),
    ],
)
def test_bad_config_raises_config_error_naming_the_option(tmp_path, content, argv, message):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_from_args(["--config", str(path), *argv])


# ----------------------------------------------------------------------------------------------- schedule


def test_schedule_warmup_then_half_cosine_values():
    param = torch.nn.Parameter(torch.zeros(1))
    other = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param]}, {"params": [other], "lr_scale": 0.5}], lr=1.0)
    schedule = WarmupCosineSchedule(
        optimizer, peak_lr=1e-3, warmup_steps=4, total_steps=12, start_lr=2e-7, final_lr=1e-6
    )
    lrs = []
    for _ in range(14):
        lrs.append(schedule.step())
        assert optimizer.param_groups[1]["lr"] == pytest.approx(
            0.5 * optimizer.param_groups[0]["lr"], rel=1e-12
        )
    assert lrs[0] == pytest.approx(2e-7)
    assert lrs[2] == pytest.approx((2e-7 + 1e-3) / 2)  # halfway through warmup
    assert lrs[4] == pytest.approx(1e-3)  # peak right after warmup
    assert lrs[8] == pytest.approx((1e-3 + 1e-6) / 2)  # halfway through the cosine
    assert lrs[6] == pytest.approx(1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * 2 / 8)) / 2)
    assert lrs[11] > 1e-6 and lrs[12] == lrs[13] == pytest.approx(1e-6)
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5])) and all(a > b for a, b in zip(lrs[4:12], lrs[5:13]))
    state = schedule.state_dict()
    fresh = WarmupCosineSchedule(optimizer, peak_lr=1e-3, warmup_steps=4, total_steps=12)
    fresh.load_state_dict(state)
    assert fresh.next_step == 14


def test_schedule_edge_cases():
    assert warmup_cosine_lr(0, peak_lr=1.0, warmup_steps=0, total_steps=10, start_lr=0.0, final_lr=0.0) == 1.0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="warmup_steps"):
        WarmupCosineSchedule(optimizer, peak_lr=1.0, warmup_steps=11, total_steps=10)
    with pytest.raises(ConfigError, match="total_steps"):
        WarmupCosineSchedule(optimizer, peak_lr=1.0, warmup_steps=0, total_steps=0)


# ----------------------------------------------------------------------------------------------- sampler


def test_sampler_shards_equally_and_resumes_mid_epoch():
    parts = [RankSampler(103, batch_size=5, rank=r, world_size=3, seed=1) for r in range(3)]
    for part in parts:
        part.set_epoch(2)
    shards = [part.indices() for part in parts]
    assert all(len(s) == 30 for s in shards)  # 103 // 15 = 6 full batches of 5 per rank
    assert len(set(sum(shards, []))) == 90  # disjoint
    single = RankSampler(103, batch_size=15, rank=0, world_size=1, seed=1)
    single.set_epoch(2)
    # Global batch k of three ranks is global batch k of one process with the three-fold batch.
    for k in range(6):
        joined = sorted(sum((s[5 * k : 5 * k + 5] for s in shards), []))
        assert joined == sorted(single.indices()[15 * k : 15 * k + 15])
    parts[1].set_epoch(2, start_batch=4)
    assert parts[1].indices() == shards[1][20:] and len(parts[1]) == 10
    parts[0].set_epoch(3)
    assert parts[0].indices() != shards[0]


# ----------------------------------------------------------------------------------------------- checkpoints


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "position": {"epoch": 0}}


def test_keep_last_k_and_latest_pointer(tmp_path):
    for step in (2, 4, 6, 8, 10):
        save_checkpoint(tmp_path, step, _state(step), keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8, 10]
    assert (tmp_path / LATEST_FILE).read_text().strip() == "ckpt-00000010.pt"
    path, state = find_latest_checkpoint(tmp_path)
    assert path.name == "ckpt-00000010.pt" and torch.equal(state["model"]["w"], torch.full((3,), 10.0))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # ordinary permissions, not a private temp file's


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="ckpt-00000002"):
        load_checkpoint(newest)
    path, state = find_latest_checkpoint(tmp_path)
    assert path.name == "ckpt-00000001.pt" and state["step"] == 1
    assert find_latest_checkpoint(tmp_path / "missing") is None


_KILLED_WRITER = """
import os, signal, sys, torch
from equiav.training import checkpoint

class DiesAfterOneMegabyte:
    def __init__(self, handle):
        self.handle, self.written = handle, 0

    def write(self, data):
        self.written += len(data)
        if self.written > 1_000_000:
            self.handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.handle.write(data)

    def flush(self):
        self.handle.flush()

real_save = torch.save
checkpoint.torch.save = lambda obj, handle: real_save(obj, DiesAfterOneMegabyte(handle))
checkpoint.save_checkpoint(sys.argv[1], 2, {"step": 2, "model": {"w": torch.zeros(1_000_000)}})
"""


def test_write_killed_midway_leaves_previous_checkpoint_intact(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1))
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)],
        env=_run_env(),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL
    strays = list(tmp_path.glob(".tmp-*"))
    assert strays and strays[0].stat().st_size > 0  # the killed write had started
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert (tmp_path / LATEST_FILE).read_text().strip() == "ckpt-00000001.pt"
    assert find_latest_checkpoint(tmp_path)[1]["step"] == 1
    assert clean_temporary_files(tmp_path) == strays and not list(tmp_path.glob(".tmp-*"))


def test_rng_state_round_trips_through_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    save_checkpoint(tmp_path, 1, {"step": 1, "rng": [rng_state()]})
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    set_rng_state(load_checkpoint(tmp_path / "ckpt-00000001.pt")["rng"][0])
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1])
    assert [random.random() for _ in range(4)] == expected[2]


# ----------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_short_digits_run_learns_checkpoints_and_exports(shared_dir, tmp_path):
    """A few dozen steps on AV-digits with the tiny preset: the loss falls, the checkpoint and export reload."""
    output = tmp_path / "run"
    result = _pretrain(
        _digits_args(shared_dir, output, 30, **{"--batch-size": "16", "--checkpoint-every-steps": "10",
                                                "--keep-last": "2", "--val-every": "30"})
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    train = _metrics(output)
    assert [r["step"] for r in train] == list(range(1, 31))
    first, last = np.mean([r["loss"] for r in train[:5]]), np.mean([r["loss"] for r in train[-5:]])
    assert last < first - 0.5, (first, last)
    assert all(0 <= r["acc_inter"] <= 100 and r["lr"] > 0 and r["samples_per_s"] > 0 for r in train)
    val = _metrics(output, "val")
    assert len(val) == 1 and 0 <= val[0]["r1_audio_to_image"] <= 1 and math.isfinite(val[0]["loss"])

    assert [s for s, _ in list_checkpoints(output / "checkpoints")] == [20, 30]
    state = load_checkpoint(output / "checkpoints" / "ckpt-00000030.pt")
    assert state["position"] == {"step": 30, "epoch": 0, "batch_in_epoch": 30}
    assert state["schedule"]["next_step"] == 30 and state["config"]["batch_size"] == 16
    model = EquiAVModel.from_pretrained(output / "final")
    exported = model.state_dict()
    assert exported.keys() == state["model"].keys()
    assert all(torch.equal(exported[k], state["model"][k]) for k in exported)
    assert model.config.name == "equiav-tiny-digits"
    from_checkpoint = EquiAVModel.from_pretrained(output / "checkpoints" / "ckpt-00000030.pt")
    assert from_checkpoint.config == model.config  # the stored model config, preprocessing included
    assert all(torch.equal(from_checkpoint.state_dict()[k], exported[k]) for k in exported)


def test_every_speaker_training_runs_without_a_held_out_speaker(shared_dir, tmp_path, one_thread, caplog):
    """``--data.val-speakers`` with no name trains on every speaker; validation then has no retrieval to score."""
    from equiav.training.pretrain import config_from_args, train

    output = tmp_path / "run"
    cfg, _ = config_from_args(_digits_args(shared_dir, output, 2) + ["--data.val-speakers"])
    assert cfg.data.val_speakers == ()
    with caplog.at_level(logging.WARNING, logger="equiav.pretrain"):
        train(cfg)
    assert "data.val_speakers is empty" in caplog.text
    (validation,) = _metrics(output, "val")
    assert validation["step"] == 2 and set(validation) == {"step", "split", "time"}  # no loss, no retrieval
    assert (output / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_unexpected_data_error_stops_the_run_naming_the_file(
    shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """A data-loader worker (or the main process) that raises something other than a decode error stops
    ``python -m equiav.training.pretrain`` with a ``DatasetError`` naming the file it was reading."""
    from equiav.training import pretrain
    from equiav.training.datasets import AVDigitsDataset, build_dataset

    output = tmp_path / "run"
    args = _digits_args(shared_dir, output, 2, **{"--num-workers": workers}) + ["--no-zero-shot-eval"]
    cfg, _ = config_from_args(args)
    dataset = build_dataset(cfg.data, cfg.model_config(), "train")
    sampler = RankSampler(len(dataset), batch_size=cfg.batch_size, rank=0, world_size=1, seed=cfg.seed)
    first = sampler.indices()[0]  # the first item the run reads
    read = AVDigitsDataset.decode

    def broken_decode(self: AVDigitsDataset, index: int, generator: torch.Generator):
        if self.split == "train" and index == first:
            raise KeyError("codec table")
        return read(self, index, generator)

    monkeypatch.setattr(AVDigitsDataset, "decode", broken_decode)
    with pytest.raises(DatasetError) as caught:
        pretrain.main(args)
    message = str(caught.value)
    expected = f"{dataset.item_path(first)}: reading item {first} of the train split failed with KeyError"
    assert expected in message
    assert ("DataLoader worker process 0" in message) == (workers == "1")
    assert not list_checkpoints(output / "checkpoints")


def _final_weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "final" / "model.safetensors")


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_identical_weights(shared_dir, tmp_path):
    """Runs killed with SIGKILL mid-step and resumed (0 and 2 data workers) end bit-identical to an uninterrupted one."""

    def args(output: Path, workers: str) -> list[str]:
        options = {"--num-workers": workers, "--checkpoint-every-steps": "3"}
        return _digits_args(shared_dir, output, 8, **options) + ["--deterministic", "--no-zero-shot-eval"]

    straight = tmp_path / "straight"
    result = _pretrain(args(straight, "0"))
    assert result.returncode == 0, result.stderr[-3000:]
    reference = _final_weights(straight)
    theirs = load_checkpoint(straight / "checkpoints" / "ckpt-00000008.pt")

    for workers in ("0", "2"):
        resumed = tmp_path / f"resumed-{workers}"
        env = _run_env()
        env["EQUIAV_FAULT_KILL_AT_STEP"] = "5"
        killed = _pretrain(args(resumed, workers), env=env)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        assert [s for s, _ in list_checkpoints(resumed / "checkpoints")] == [3]
        assert [r["step"] for r in _metrics(resumed)] == [
            1,
            2,
            3,
            4,
        ]  # step 4 was logged after the checkpoint
        assert not (resumed / "final").exists()

        result = _pretrain(args(resumed, workers))
        assert result.returncode == 0, result.stderr[-3000:]
        assert [r["step"] for r in _metrics(resumed)] == list(
            range(1, 9)
        )  # the killed run's step 4 was replaced
        weights = _final_weights(resumed)
        assert weights.keys() == reference.keys()
        assert all(torch.equal(weights[k], reference[k]) for k in reference), workers
        ours = load_checkpoint(resumed / "checkpoints" / "ckpt-00000008.pt")
        for slot, state in theirs["optimizer"]["state"].items():
            assert all(
                torch.equal(value, ours["optimizer"]["state"][slot][key]) for key, value in state.items()
            )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(shared_dir, tmp_path):
    """2-process DDP (gloo, CPU) runs, and its first losses equal one process with the same global batch."""
    two = tmp_path / "two"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]  # fmt: skip
    result = _pretrain(
        _digits_args(shared_dir, two, 3, **{"--batch-size": "4"}) + ["--no-zero-shot-eval"], launcher=launcher
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one = tmp_path / "one"
    result = _pretrain(_digits_args(shared_dir, one, 3, **{"--batch-size": "8"}) + ["--no-zero-shot-eval"])
    assert result.returncode == 0, result.stderr[-3000:]

    two_train, one_train = _metrics(two), _metrics(one)
    assert [r["step"] for r in two_train] == [1, 2, 3]
    # Same weights and the same 8 items at step 1: the loss over the gathered global batch must agree.
    assert two_train[0]["loss"] == pytest.approx(one_train[0]["loss"], rel=1e-5)
    assert two_train[0]["grad_norm"] == pytest.approx(one_train[0]["grad_norm"], rel=1e-4)
    for a, b in zip(two_train[1:], one_train[1:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-3)
    assert EquiAVModel.from_pretrained(two / "final").config.name == "equiav-tiny-digits"
    assert load_checkpoint(two / "checkpoints" / "ckpt-00000003.pt")["world_size"] == 2


def test_fault_hook_kills_only_the_named_rank_in_the_first_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KILL_RANK_ENV, raising=False)
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.delenv(KILL_AT_STEP_ENV, raising=False)
    assert fault_kill_step(0) is None
    monkeypatch.setenv(KILL_AT_STEP_ENV, "5")
    assert fault_kill_step(0) == fault_kill_step(1) == 5
    monkeypatch.setenv(KILL_RANK_ENV, "1")
    assert fault_kill_step(0) is None and fault_kill_step(1) == 5
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert fault_kill_step(1) == 5
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert fault_kill_step(1) is None


def _torchrun(max_restarts: int) -> list[str]:
    """torchrun with two CPU processes on a free port, restarting the worker group up to ``max_restarts`` times."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--max-restarts", str(max_restarts), "--monitor-interval", "0.1"]  # fmt: skip


@pytest.mark.slow
def test_torchrun_restarts_a_killed_process_and_resumes_from_last_checkpoint(shared_dir, tmp_path):
    """Rank 1 of a 2-process run dies (SIGKILL) in step 3; torchrun (--max-restarts 1) restarts the group, which
    resumes from the step-2 checkpoint and ends with the weights of an uninterrupted 2-process run."""

    def args(output: Path) -> list[str]:
        options = {"--batch-size": "4", "--checkpoint-every-steps": "1"}
        return _digits_args(shared_dir, output, 3, **options) + ["--deterministic", "--no-zero-shot-eval"]

    straight = tmp_path / "straight"
    result = _pretrain(args(straight), launcher=_torchrun(0))
    assert result.returncode == 0, result.stderr[-3000:]

    restarted = tmp_path / "restarted"
    env = _run_env()
    env.update({KILL_AT_STEP_ENV: "3", KILL_RANK_ENV: "1"})
    # torchrun's agent keeps one shared store over restarts, so restarted processes can read the failed attempt's
    # peer addresses and fail to connect; when rank 0 hosts a new store in each attempt the restart is reliable.
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    result = _pretrain(args(restarted), env=env, launcher=_torchrun(1))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "from step 0" in log and "from step 2" in log, log[-3000:]
    assert re.search(r"resumed from \S*ckpt-00000002\.pt at step 2", log), log[-3000:]
    assert [r["step"] for r in _metrics(restarted)] == [1, 2, 3]
    assert [s for s, _ in list_checkpoints(restarted / "checkpoints")] == [1, 2, 3]
    weights, reference = _final_weights(restarted), _final_weights(straight)
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_benchmark_flop_formula_matches_torch_flop_counter():
    """The analytic FLOP count that the benchmark's MFU uses equals torch's count of the model's forward."""
    import importlib.util

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from equiav import EquiAVConfig

    spec = importlib.util.spec_from_file_location(
        "bench_train_step", REPO_ROOT / "benchmarks" / "bench_train_step.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = EquiAVConfig.from_preset("equiav-tiny")
    model = EquiAVModel(cfg)
    inputs = bench.make_inputs(cfg, batch=2, views=5, device=torch.device("cpu"))
    # The math attention kernel runs as matmuls that the counter sees (it has no rule for the fused CPU kernel).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inputs)
    assert bench.forward_flops(cfg, batch=2, views=5) == pytest.approx(counter.get_total_flops(), rel=1e-9)


class _RandomPairs(torch.utils.data.Dataset):
    """Synthetic pretraining items (a function of the index), to exercise the loop without reading files."""

    def __init__(self, cfg, size: int, views: int = 4) -> None:
        self.cfg, self.size, self.views = cfg, size, views

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        cfg = self.cfg
        audio = (cfg.target_length, cfg.num_mel_bins)
        image = (3, cfg.image_size, cfg.image_size)
        return {
            "audio": torch.randn(audio, generator=g), "image": torch.randn(image, generator=g),
            "audio_aug": torch.randn(audio, generator=g), "image_aug": torch.randn(image, generator=g),
            "t_audio": torch.rand(cfg.audio_aug_dim, generator=g), "t_image": torch.rand(cfg.visual_aug_dim, generator=g),
            "t_audio_views": torch.rand(self.views, cfg.audio_aug_dim, generator=g),
            "t_image_views": torch.rand(self.views, cfg.visual_aug_dim, generator=g),
            "index": torch.tensor(index), "label": torch.tensor(index % 10),
        }  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_run_checkpoints_resumes_and_exports(tmp_path, monkeypatch):
    from equiav.training import pretrain

    monkeypatch.setattr(pretrain, "build_dataset", lambda data, model, split: _RandomPairs(model, 64))
    values = {
        "data": {"kind": "manifest", "path": "synthetic"}, "model": "equiav-tiny", "device": "cuda",
        "precision": "bf16", "grad_checkpointing": True, "batch_size": 8, "num_workers": 2,
        "max_steps": 6, "checkpoint_every_steps": 3, "log_every": 1, "progress": False, "tensorboard": False,
        "output_dir": str(tmp_path), "optim": {"warmup_steps": 2, "lr": 1e-3, "grad_accum": 2},
    }  # fmt: skip
    result = pretrain.train(build_config(PretrainConfig, values))
    assert result["step"] == 6 and math.isfinite(result["train"]["loss"])
    losses = [r["loss"] for r in _metrics(tmp_path)]
    assert len(losses) == 6 and losses[-1] < losses[0]
    values["max_steps"] = 9
    result = pretrain.train(build_config(PretrainConfig, values))
    assert result["step"] == 9 and [r["step"] for r in _metrics(tmp_path)] == list(range(1, 10))
    state = load_checkpoint(tmp_path / "checkpoints" / "ckpt-00000009.pt")
    assert state["position"]["step"] == 9 and all(not k.startswith("_orig_mod") for k in state["model"])
    model = EquiAVModel.from_pretrained(tmp_path / "final")
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["avdigits_tiny.json", "avdigits_tiny_all.json", "audioset_base.json"])
def test_example_configs_parse(name):
    cfg, _ = config_from_args(["--config", str(REPO_ROOT / "configs" / name)])
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 1e-5
    assert cfg.model_config().name == cfg.model
