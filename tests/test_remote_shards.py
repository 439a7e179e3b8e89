"""Shards from anywhere: HTTP (a real server on a free port), ``pipe:`` commands, an in-memory object store; shard
jobs in independent, resumable parts; typed errors for unreachable, cut-off and read-only locations."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from http_server import serve
from safetensors.torch import load_file
from test_data import FRAMES, TINY, VIEWS, _write_manifest

from equiav.errors import ConfigError, DatasetError, StorageError
from equiav.parts import PartPlan, part_from_env
from equiav.storage import Folder, replace_name
from equiav.training import prepare
from equiav.training.datasets import BadItem, DataConfig, ShardDataset, ShardIndex, ShardWriter

REPO_ROOT = Path(__file__).resolve().parents[1]


def _config(spec: str) -> DataConfig:
    return DataConfig(kind="shards", path=str(spec), val_path=str(spec), frame_count=FRAMES, num_views=VIEWS)


KEYS = ("audio", "image", "image_aug", "t_audio", "t_image", "t_audio_views", "t_image_views", "label")


def _write_shards(tmp_path: Path, count: int = 5, *extra: str) -> Path:
    manifest = _write_manifest(tmp_path, [""] * count)
    out = tmp_path / "shards"
    args = ["shards", "--source", "manifest", "--input", str(manifest), "--output", str(out),
            "--shard-size", "2", "--frames", str(FRAMES), "--model", "equiav-tiny", *extra]  # fmt: skip
    assert prepare.main(args) == 0
    return out


def _items(spec: str, world: int = 2, split: str = "train") -> list[dict[str, torch.Tensor] | BadItem]:
    config = _config(spec)
    items = []
    for rank in range(world):
        items += list(ShardDataset(config, TINY, split, rank=rank, world_size=world))
    return items


def _assert_equal(first: list, second: list) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert int(a["index"]) == int(b["index"])
        for key in KEYS:
            assert torch.equal(a[key], b[key]), key


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    return _write_shards(tmp_path)


def test_http_folder_index_and_brace_pattern_read_like_local_files(shards: Path) -> None:
    local = _items(str(shards))
    with serve(shards.parent) as base:
        for spec in (
            f"{base}/shards",
            f"{base}/shards/shards.json",
            f"{base}/shards/shard-{{000000..000002}}.tar",
        ):
            _assert_equal(_items(spec), local)
        subset = ShardIndex.load(f"{base}/shards/shard-{{000001..000002}}.tar")
        assert [count for _, count in subset.shards] == [2, 1]
        assert subset.shards[0][0] == f"{base}/shards/shard-000001.tar"


def test_pipe_command_reads_like_local_files(shards: Path) -> None:
    local = _items(str(shards), split="val")
    _assert_equal(_items(f"pipe:cat {shards}/shard-{{000000..000002}}.tar", split="val"), local)
    _assert_equal(_items(f"pipe:cat {shards}/shards.json", split="val"), local)


def test_data_loader_workers_read_http_shards(shards: Path) -> None:
    from torch.utils.data import DataLoader

    from equiav.training.datasets import collate_items

    config = _config(str(shards))
    with serve(shards.parent) as base:
        remote = _config(f"{base}/shards")
        for rank in range(2):
            expected = list(ShardDataset(config, TINY, "train", rank=rank, world_size=2))
            dataset = ShardDataset(remote, TINY, "train", rank=rank, world_size=2)
            loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate_items)
            got = sorted((b for b in loader), key=lambda b: int(b["index"]))
            expected = sorted(expected, key=lambda item: int(item["index"]))
            assert [int(b["index"]) for b in got] == [int(item["index"]) for item in expected]
            for batch, item in zip(got, expected):
                assert torch.equal(batch["audio"][0], item["audio"])


def test_shard_cut_off_mid_transfer_gives_bad_items_naming_its_url(shards: Path) -> None:
    with serve(shards.parent, cut={"shard-000001.tar"}) as base:
        items = _items(f"{base}/shards")
    assert len(items) == 4  # two per rank, as from intact shards
    bad = [item for item in items if isinstance(item, BadItem)]
    assert bad and all(item.path.startswith(f"{base}/shards/shard-000001.tar") for item in bad)
    assert all("cannot read shard" in item.reason for item in bad)


def test_unreachable_and_read_only_locations_are_typed_errors_naming_them(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/shards"
    with pytest.raises(DatasetError, match=f"{url}/shards.json: cannot open"):
        ShardIndex.load(url)
    with serve(tmp_path) as base, pytest.raises(DatasetError, match=f"{base}/none/shards.json: cannot open"):
        ShardIndex.load(f"{base}/none/")
    with pytest.raises(DatasetError, match="pipe:false shards.json"):
        ShardIndex.load("pipe:false shards.json")
    with pytest.raises(StorageError, match="read-only"):
        Folder("https://example.org/shards")
    with pytest.raises(StorageError, match="pipe:cat x.tar"):
        Folder("pipe:cat x.tar")
    assert replace_name("pipe:curl -s https://h/d/shard-000001.tar | cat", "shards.json") == (
        "pipe:curl -s https://h/d/shards.json | cat"
    )


def test_object_store_output_round_trips(tmp_path: Path) -> None:
    local = _items(str(_write_shards(tmp_path)))
    manifest = tmp_path / "train.json"
    url = f"memory://equiav-test-{os.getpid()}/shards"
    args = ["shards", "--source", "manifest", "--input", str(manifest), "--output", url, "--shard-size", "2",
            "--frames", str(FRAMES), "--model", "equiav-tiny"]  # fmt: skip
    assert prepare.main(args) == 0
    _assert_equal(_items(url), local)
    _assert_equal(_items(f"{url}/shard-*.tar"), local)


def test_parts_write_independently_and_merge_into_the_one_part_index(tmp_path: Path) -> None:
    whole = _write_shards(tmp_path, 7)
    manifest = tmp_path / "train.json"
    out = tmp_path / "parts"

    def part(number: int, *extra: str) -> int:
        return prepare.main(["shards", "--source", "manifest", "--input", str(manifest), "--output", str(out),
                             "--shard-size", "2", "--frames", str(FRAMES), "--model", "equiav-tiny",
                             "--part", str(number), "--num-parts", "3", *extra])  # fmt: skip

    assert part(2) == 0 and part(0) == 0
    assert not (out / "shards.json").exists()  # part 1 is missing
    assert part(1) == 0
    index = json.loads((out / "shards.json").read_text())
    assert index["total"] == 7 and [s["count"] for s in index["shards"]] == [2, 2, 2, 1]
    by_index = {int(item["index"]): item for item in _items(str(out), world=1, split="val")}
    reference = {int(item["index"]): item for item in _items(str(whole), world=1, split="val")}
    assert by_index.keys() == reference.keys() == set(range(7))
    _assert_equal([by_index[i] for i in range(7)], [reference[i] for i in range(7)])

    (out / "shards.json").unlink()
    with pytest.raises(ConfigError, match="shard_size 2 \\(stored\\) vs 3 \\(now\\)"):
        ShardWriter(out, PartPlan(7, 3, 3), 0, {k: index[k] for k in ("audio", "frames", "labels", "num_classes",
                                                                      "source", "input", "split")})  # fmt: skip


def test_a_killed_part_resumes_without_rewriting_finished_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _write_manifest(tmp_path, [""] * 5)
    out = tmp_path / "shards"
    args = ["shards", "--source", "manifest", "--input", str(manifest), "--output", str(out), "--shard-size", "2",
            "--frames", str(FRAMES), "--model", "equiav-tiny"]  # fmt: skip
    read = prepare.RawSampler.__call__
    calls: list[int] = []
    killed = []

    def killed_at_item_3(self: prepare.RawSampler, index: int):
        calls.append(index)
        if index == 3 and not killed:
            killed.append(index)
            raise KeyboardInterrupt
        return read(self, index)

    monkeypatch.setattr(prepare.RawSampler, "__call__", killed_at_item_3)
    with pytest.raises(KeyboardInterrupt):
        prepare.main(args)
    assert (out / "shard-000000.tar").exists() and not (out / "shard-000001.tar").exists()
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    calls.clear()
    assert prepare.main(args) == 0
    assert calls == [2, 3, 4]  # items 0 and 1 were in the finished shard
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first
    assert json.loads((out / "shards.json").read_text())["total"] == 5
    assert prepare.main(args) == 2  # the folder holds a complete index: refused


def test_parts_follow_torchrun_rank_and_world_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert part_from_env(None, None) == (1, 4)
    assert part_from_env(0, 2) == (0, 2)
    with pytest.raises(ConfigError, match="--part must be in"):
        part_from_env(2, 2)
    plan = PartPlan(10, 3, 2)
    spans = [span for part in range(3) for span in plan.shards(part)]
    assert [span.number for span in spans] == list(range(len(spans)))
    assert [i for span in spans for i in range(span.start, span.stop)] == list(range(10))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_pretrain(data: str, output: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "equiav.training.pretrain", "--model", "equiav-tiny", "--data.kind", "shards",
               "--data.path", data, "--data.val-path", data, "--data.frame-count", str(FRAMES),
               "--data.num-views", "4", "--output-dir", str(output), "--max-steps", "2", "--batch-size", "2",
               "--num-workers", "1", "--log-every", "1", "--val-batches", "1", "--device", "cpu",
               "--deterministic", "--no-progress", "--no-tensorboard"]  # fmt: skip
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_torchrun_two_processes_on_http_shards_equal_the_local_run(tmp_path: Path) -> None:
    shards = _write_shards(tmp_path, 8)
    local = _torchrun_pretrain(str(shards), tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    with serve(shards.parent) as base:
        remote = _torchrun_pretrain(f"{base}/shards/shard-{{000000..000003}}.tar", tmp_path / "remote")
    assert remote.returncode == 0, remote.stderr[-3000:]
    ours = load_file(tmp_path / "remote" / "final" / "model.safetensors")
    theirs = load_file(tmp_path / "local" / "final" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "remote" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["split"] == "train"]  # fmt: skip
    assert len(losses) == 2
