"""Helpers shared by the benchmark scripts: the machine description, timing and the printed ratios.

Timing rules used by every script: a few untimed warm-up calls first, then ``repeats`` timed calls; the reported
number is the median. Each call is timed both by the wall clock and by the process CPU clock. On a machine shared with
other jobs the wall time also counts the time spent waiting for a core, the CPU time does not (but it sums the time of
all threads); the load average is printed so that a reader can tell a quiet run from a busy one. When several variants
are compared, ``time_round_robin`` interleaves their calls, so that a load that drifts during the run slows them alike
and their ratio stays meaningful.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def use_repository_package() -> None:
    """Import ``equiav`` from this checkout even when it is not installed (scripts run as ``python benchmarks/x.py``)."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def package_at_revision(revision: str, name: str = "equiav_before") -> ModuleType:
    """``equiav`` as it was at git ``revision`` of this checkout, imported as the package ``name``.

    For before/after ratios measured in one process: the revision's ``equiav/`` folder is extracted with ``git
    archive`` into a temporary folder and imported under another name (its relative imports resolve inside it).
    """
    if name in sys.modules:
        return sys.modules[name]
    target = Path(tempfile.mkdtemp(prefix="equiav-before-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", revision, "equiav"], capture_output=True
    )
    if archive.returncode:
        raise SystemExit(f"git archive {revision} failed: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    init = target / "equiav" / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------------------
# Machine


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The CPU features that decide the speed of bf16 matrix products on a CPU (AMX, AVX-512 BF16)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next(line.split(":", 1)[1].split() for line in info if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith("amx") or f in ("avx512_bf16", "avx512f", "avx2"))


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unavailable"
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} logical CPUs"


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a reader needs to compare two runs: hardware, software versions, thread count and current load."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "cpu_flags": " ".join(cpu_flags()) or "none reported",
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for module in ("torchvision", "timm", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = "not installed"
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    info["load"] = load_average()
    return info


def print_header(title: str, device: torch.device | str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Print the benchmark's title, machine and settings; return the machine description."""
    info = machine_info(device)
    print(f"== {title}")
    print("machine: " + ", ".join(f"{key} {value}" for key, value in info.items()))
    print("settings: " + ", ".join(f"{key} {value}" for key, value in settings.items()))
    return info


# ---------------------------------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timing:
    """Seconds per call of one variant: all timed samples and their medians."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    def describe(self, items: int, unit: str) -> str:
        """``"123.4 ms wall (spread 120.0-130.2), 240.1 ms CPU, 8.1 clips/s"`` for ``items`` items per call."""
        return (
            f"{self.median_wall * 1e3:9.1f} ms wall (min {min(self.wall) * 1e3:.1f}, max {max(self.wall) * 1e3:.1f}), "
            f"{self.median_cpu * 1e3:9.1f} ms CPU, {items / self.median_wall:9.2f} {unit}/s"
        )


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _timed(run: Callable[[], object], sync: Callable[[], None], timing: Timing) -> None:
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    sync()
    timing.wall.append(time.perf_counter() - wall)
    timing.cpu.append(time.process_time() - cpu)


def time_call(
    run: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None] = lambda: None
) -> Timing:
    """Time ``repeats`` calls of ``run`` after ``warmup`` untimed calls."""
    return time_round_robin({"run": run}, repeats, warmup, sync)["run"]


def time_round_robin(
    variants: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, Timing]:
    """Time every variant ``repeats`` times, interleaved (a, b, c, a, b, c, ...), after ``warmup`` rounds."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        for run in variants.values():
            run()
            sync()
    timings = {name: Timing() for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            _timed(run, sync, timings[name])
    return timings


def ratio_line(what: str, baseline: Timing, ours: Timing, goal: float | None = None) -> str:
    """``what: 1.52x (wall), 1.49x (CPU)``: the baseline's median time over ours (> 1 means ours is faster)."""
    wall = baseline.median_wall / ours.median_wall
    cpu = baseline.median_cpu / ours.median_cpu
    line = f"ratio {what}: {wall:.2f}x (wall medians), {cpu:.2f}x (CPU medians)"
    if goal is not None:
        line += f"; goal >= {goal:g}x: {'met' if wall >= goal else 'NOT met'} on wall time"
    return line


# ---------------------------------------------------------------------------------------------------------------------
# Arguments and results


def add_common_arguments(
    parser: argparse.ArgumentParser, repeats: int, warmup: int, device: bool = True
) -> None:
    """Options the scripts of this folder share, with the script's own default repeat counts."""
    parser.add_argument(
        "--repeats", type=int, default=repeats, help=f"timed calls per variant (default {repeats})"
    )
    parser.add_argument(
        "--warmup", type=int, default=warmup, help=f"untimed calls per variant first (default {warmup})"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    if device:
        parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings that only check that the script runs"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")


def apply_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def write_json(path: Path | None, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (machine, settings, results) as indented JSON when a path was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def timing_record(timing: Timing, items: int) -> dict[str, float]:
    """The numbers of one timing that go into a JSON result."""
    return {
        "median_wall_s": timing.median_wall,
        "median_cpu_s": timing.median_cpu,
        "items_per_s": items / timing.median_wall,
        "repeats": len(timing.wall),
    }
