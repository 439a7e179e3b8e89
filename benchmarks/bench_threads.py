"""Threads beside a busy core: ``embed_audio`` and a training step of a small model on 1 thread and on one per core.

    python benchmarks/bench_threads.py                 # equiav-tiny-digits, 500 clips, batch-32 training steps
    python benchmarks/bench_threads.py --no-busy       # the same on whatever load the machine has

A second process spins on one core for the whole run (the "other job"), then the variants are timed round-robin:
``threads=1``, ``threads=N`` (torch's default, one per core) and ``default`` (what ``embed_audio`` does without
``num_threads``, see ``equiav.threads``). The printed ratios are medians of the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_header, time_round_robin, use_repository_package  # noqa: E402

use_repository_package()

from bench_train_step import StepRunner, make_inputs  # noqa: E402

from equiav import EquiAVModel  # noqa: E402


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy_core(enabled: bool) -> Iterator[None]:
    """A process that keeps one core busy while the block runs (the other job of the measurement)."""
    if not enabled:
        yield
        return
    process = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    process.start()
    try:
        yield
    finally:
        process.terminate()
        process.join()


def on_threads(count: int | None, run: Callable[[], object]) -> Callable[[], object]:
    """``run`` on ``count`` torch threads (None: leave the setting to the call)."""
    default = torch.get_num_threads()

    def timed() -> object:
        torch.set_num_threads(count or default)
        return run()

    return timed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="equiav-tiny-digits")
    parser.add_argument("--clips", type=int, default=500, help="clips per embed_audio call")
    parser.add_argument("--batch-size", type=int, default=32, help="training-step batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", action=argparse.BooleanOptionalAction, default=True, help="spin one core")
    parser.add_argument("--quick", action="store_true", help="a few clips and one repeat (smoke test)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.clips, args.batch_size, args.repeats = 8, 2, 1
    cores = torch.get_num_threads()
    model = EquiAVModel.from_pretrained(args.model).eval()
    rate = model.config.sample_rate
    clips = list(torch.randn(args.clips, int(0.9 * rate), generator=torch.Generator().manual_seed(0)) * 0.1)
    runner = StepRunner(model.config, torch.device("cpu"), bf16=False, checkpointing=False)
    inputs = make_inputs(model.config, args.batch_size, model.config.num_views, torch.device("cpu"))
    print_header(
        "threads beside a busy core",
        "cpu",
        {
            "model": args.model,
            "clips": args.clips,
            "batch": args.batch_size,
            "busy core": args.busy,
            "cores": cores,
        },
    )
    embed = lambda: model.embed_audio(clips, sample_rate=rate, num_threads=None)  # noqa: E731
    step = lambda: runner.step(inputs)  # noqa: E731
    variants = {
        "embed_audio threads=1": on_threads(
            1, lambda: model.embed_audio(clips, sample_rate=rate, num_threads=1)
        ),
        f"embed_audio threads={cores}": on_threads(
            cores, lambda: model.embed_audio(clips, sample_rate=rate, num_threads=cores)
        ),
        "embed_audio default": on_threads(None, embed),
        "train step threads=1": on_threads(1, step),
        f"train step threads={cores}": on_threads(cores, step),
    }
    with busy_core(args.busy):
        timings = time_round_robin(variants, repeats=args.repeats, warmup=1)
    for name, timing in timings.items():
        print(
            f"{name:<26} {timing.median_wall:8.3f} s wall (min {min(timing.wall):.3f}, max {max(timing.wall):.3f})"
        )
    for what in ("embed_audio", "train step"):
        one, many = timings[f"{what} threads=1"], timings[f"{what} threads={cores}"]
        print(f"{what}: threads={cores} / threads=1 = {many.median_wall / one.median_wall:.2f}x the time")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
