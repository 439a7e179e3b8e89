"""The benchmark suite: its helpers, its re-implementation of the authors' inference path, and that every script runs.

Benchmarks never fail on a time; these tests check what the timings rest on (the authors' path gives the authors'
numbers, the timing helpers take the medians they claim) and, marked slow, that every script runs with ``--quick``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import bench_fbank  # noqa: E402
import bench_inference  # noqa: E402
import bench_train_step  # noqa: E402
import common  # noqa: E402
import run_all  # noqa: E402

from equiav import EquiAVConfig, EquiAVModel  # noqa: E402
from equiav.packing import packing_available  # noqa: E402


def test_round_robin_interleaves_variants_and_counts_repeats():
    calls = []
    timings = common.time_round_robin(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b"] * 4
    assert [len(t.wall) for t in timings.values()] == [3, 3]
    assert all(len(t.cpu) == 3 for t in timings.values())


def test_medians_and_ratio_line():
    baseline = common.Timing(wall=[3.0, 9.0, 6.0], cpu=[2.0, 2.0, 8.0])
    ours = common.Timing(wall=[2.0, 1.0, 4.0], cpu=[1.0, 0.5, 4.0])
    assert (baseline.median_wall, ours.median_wall) == (6.0, 2.0)
    line = common.ratio_line("ours / theirs", baseline, ours, goal=2.5)
    assert "3.00x (wall medians)" in line and "2.00x (CPU medians)" in line and "met" in line
    assert "NOT met" in common.ratio_line("x", baseline, ours, goal=3.5)
    assert "3.00 clips/s" in ours.describe(items=6, unit="clips")
    with pytest.raises(ValueError, match="repeats"):
        common.time_round_robin({"a": lambda: None}, repeats=0, warmup=0)


def test_authors_path_reproduces_the_authors_outputs(official_dir, parity):
    """Holding the authors' fixture weights, the benchmark's baseline gives their ``forward_feat`` numbers."""
    ours = EquiAVModel.from_pretrained(official_dir / "pretrain_checkpoint.pth", config="equiav-test")
    authors = bench_inference.AuthorsInference(ours.config).eval()
    assert not authors.load_state_dict(ours.state_dict(), strict=False).missing_keys
    audio = parity["input.a_fbank"][:, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        z_a, z_v = authors.forward_feat(
            audio, parity["input.v"], parity["input.t_a_list"], parity["input.t_v_list"]
        )
    torch.testing.assert_close(z_a, parity["output.z_a_feat"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_v, parity["output.z_v_feat"], rtol=1e-5, atol=1e-5)


def test_equality_check_compares_the_two_paths():
    cfg = EquiAVConfig.from_preset("equiav-tiny")
    ours, authors = bench_inference.build_models(cfg, torch.device("cpu"))
    inputs = bench_inference.make_inputs(cfg, 2, torch.device("cpu"))
    assert bench_inference.check_equal(ours, authors, inputs) < 1e-5
    with torch.no_grad():
        authors.blocks_a[0].attn.proj.weight[0] += 0.1
    assert bench_inference.check_equal(ours, authors, inputs) > 1e-3


@pytest.mark.parametrize(
    "sampler, key, columns",
    [
        (bench_inference.authors_audio_vectors, "sampler.audio", [0, 1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 13, 17, 21, 22, 23]),
        (bench_inference.authors_image_vectors, "sampler.visual", [1, 2, 3, 4, 5, 6, 10, 14, 15, 16, 17]),
    ],
)  # fmt: skip
def test_authors_sampler_has_the_authors_distribution(parity, sampler, key, columns):
    """Column means of 400 draws agree with the authors' 20,000 recorded draws within 5 standard errors."""
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    cfg = EquiAVConfig()
    draws = torch.cat([sampler(cfg) for _ in range(25)])
    reference = parity[key]
    assert draws.shape == (400, reference.shape[1])
    standard_error = reference.std(dim=0) / draws.shape[0] ** 0.5
    gap = (draws.mean(dim=0) - reference.mean(dim=0)).abs()
    assert (gap[columns] <= 5 * standard_error[columns] + 1e-6).all(), gap / standard_error
    assert (draws.min(dim=0).values >= reference.min(dim=0).values - 1e-6).all()
    assert (draws.max(dim=0).values <= reference.max(dim=0).values + 1e-6).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", [bench.name for bench in run_all.BENCHMARKS])
def test_benchmark_script_runs_quick(tmp_path, name):
    command = [sys.executable, str(BENCH_DIR / "run_all.py"), "--quick", "--threads", "1"]
    result = subprocess.run(
        [*command, "--only", name, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert f"== {name}: ok" in summary
    assert "machine:" in (tmp_path / f"{name}.log").read_text()
    if name == "inference":
        results = json.loads((tmp_path / "inference.json").read_text())["results"]
        assert all(r["max_abs_difference"] < 1e-4 and r["bf16_min_cosine"] > 0.999 for r in results)
        packed = {"ours fp32 packed", "ours bf16 packed"} if packing_available() else set()
        assert set(results[0]["timings"]) == {"authors fp32", "ours fp32", "ours bf16"} | packed
        if packed:
            assert all(
                r["packed_max_abs_difference"] < 1e-4 and r["packed_bf16_min_cosine"] > 0.999 for r in results
            )
    if name == "train_step":
        assert "speed-up compiled / eager:" in (tmp_path / f"{name}.log").read_text()
    if name == "roofline":
        results = json.loads((tmp_path / "roofline.json").read_text())["results"]
        assert results["flops_per_call"] > 1e8 and results["matmul_fp32_gflops"] > 0
        assert all(
            0 < v["ratio"] and 0 <= v["profile"]["matrix_share"] <= 1 for v in results["variants"].values()
        )
    if name == "dataloading":
        results = json.loads((tmp_path / "dataloading.json").read_text())["results"]
        assert results["manifest"]["slowest_stage"] in results["manifest"]["stages_s"]
        assert all(rate > 0 for rate in results["manifest"]["loader_examples_per_s"].values())


@pytest.mark.parametrize("case", ["chirp_10s", "noise_3s", "short_0p42s"])
def test_authors_fbank_path_gives_torchaudios_values(fbank_fixture, case):
    """The filterbank baseline computes what torchaudio's ``kaldi.fbank`` computes for the authors."""
    fixture = fbank_fixture
    waveform = fixture[f"{case}.waveform"]
    expected = fixture[f"{case}.fbank"]
    got = bench_fbank.authors_fbank(waveform - waveform.mean(), int(fixture[f"{case}.sample_rate"]))
    assert got.shape == expected.shape
    loud = expected >= expected.max(dim=-1, keepdim=True).values - 8 * np.log(10)
    assert (got - expected)[loud].abs().max() <= 1e-3


def test_package_at_revision_is_a_separate_importable_copy():
    """Before/after ratios import the package of a git revision beside the working one."""
    import importlib

    import equiav

    before = common.package_at_revision("HEAD", name="equiav_at_head_for_test")
    audio_before = importlib.import_module("equiav_at_head_for_test.audio")
    assert before is not equiav and audio_before.kaldi_fbank is not equiav.audio.kaldi_fbank
    assert audio_before.__file__ != equiav.audio.__file__
    clip = 0.1 * torch.randn(4000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(audio_before.kaldi_fbank(clip, 16000), equiav.audio.kaldi_fbank(clip, 16000))
    with pytest.raises(SystemExit, match="no-such-revision"):
        common.package_at_revision("no-such-revision", name="equiav_missing_for_test")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_peak_memory_of_a_child_is_its_own():
    """A probe process reports its own peak, not the larger one of the process that started it."""
    held = np.ones(2**30 // 8)  # 1 GiB resident in this process
    assert bench_train_step.peak_rss_gib() > 1.0
    code = f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import bench_train_step; print(bench_train_step.peak_rss_gib())"
    child = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert 0 < child < bench_train_step.peak_rss_gib() - 0.6
    del held
