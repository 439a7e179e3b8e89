"""Run every benchmark of this folder, each in a fresh process, and summarise their ratios.

    python benchmarks/run_all.py                          # CPU, default settings (tens of minutes on 2 cores)
    python benchmarks/run_all.py --quick                  # tiny settings: checks that every script runs
    python benchmarks/run_all.py --device cuda --out DIR  # GPU variants; logs and JSON results under DIR
    python benchmarks/run_all.py --only inference fbank --args inference "--batch-sizes 1"

Each script's output goes to the console and, with ``--out``, to ``DIR/<name>.log`` (and ``DIR/<name>.json`` for the
scripts that write JSON); ``DIR/summary.txt`` collects the machine line and every ratio, goal and slowest-stage line.
The exit status is non-zero when a script fails to run; a slow result never fails the run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUMMARY_MARKERS = ("machine:", "ratio", "speed-up", "slowest", "goal", "examples/s", "MFU", "cosine", "max |",
                   "predictors")  # fmt: skip


@dataclass(frozen=True)
class Benchmark:
    """A script, its arguments in ``--quick`` mode and on a CUDA device, and the options it understands."""

    name: str
    script: str
    quick: tuple[str, ...]
    cuda: tuple[str, ...] = ()
    threads: bool = True
    json: bool = False


BENCHMARKS = (
    Benchmark(
        "inference", "bench_inference.py", ("--quick",), ("--device", "cuda"), json=True
    ),
    Benchmark(
        "fbank", "bench_fbank.py", ("--clips", "2", "--seconds", "1", "--repeats", "1", "--warmup", "0"),
        ("--device", "cuda"),
    ),
    Benchmark(
        "augment", "bench_augment.py", ("--examples", "1", "--repeats", "1", "--warmup", "0", "--views", "2"),
        ("--device", "cuda"),
    ),
    Benchmark("roofline", "bench_roofline.py", ("--quick",), ("--device", "cuda"), json=True),
    Benchmark("dataloading", "bench_dataloading.py", ("--quick",), json=True),
    Benchmark(
        "train_step", "bench_train_step.py",
        ("--preset", "equiav-tiny", "--batch-size", "2", "--views", "1", "16", "--warmup", "0", "--repeats", "1",
         "--compile", "--compile-backend", "aot_eager"),
        ("--device", "cuda"),
    ),
)  # fmt: skip


def command_for(bench: Benchmark, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(HERE / bench.script)]
    if args.quick:
        command += bench.quick
    if args.device.startswith("cuda"):
        command += bench.cuda
    if args.threads and bench.threads:
        command += ["--threads", str(args.threads)]
    if args.out and bench.json:
        command += ["--json", str(args.out / f"{bench.name}.json")]
    command += shlex.split(dict(args.args or []).get(bench.name, ""))
    return command


def run_one(bench: Benchmark, args: argparse.Namespace) -> tuple[int, float, list[str]]:
    """Run one script, echoing its output; return its exit status, seconds and its summary lines."""
    command = command_for(bench, args)
    print(f"\n### {bench.name}: {' '.join(shlex.quote(part) for part in command)}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    lines: list[str] = []
    log = open(args.out / f"{bench.name}.log", "w") if args.out else None  # noqa: SIM115 - closed below
    try:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=HERE.parent
        ) as process:
            for line in process.stdout:
                print(line, end="", flush=True)
                lines.append(line.rstrip("\n"))
                if log:
                    log.write(line)
            status = process.wait()
    finally:
        if log:
            log.close()
    seconds = time.perf_counter() - start
    summary = [line for line in lines if any(marker in line for marker in SUMMARY_MARKERS)]
    return status, seconds, summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings: only check that every script runs"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (scripts that have GPU variants)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every script")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHMARKS], help="run only these")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for logs, JSON results and summary.txt"
    )
    parser.add_argument(
        "--args", nargs=2, action="append", metavar=("NAME", "ARGS"), help="extra arguments for one script"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    selected = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    report, failed = [], []
    for bench in selected:
        if not (HERE / bench.script).is_file():
            report += [f"== {bench.name}: MISSING ({bench.script} not found)"]
            failed.append(bench.name)
            continue
        status, seconds, summary = run_one(bench, args)
        state = "ok" if status == 0 else f"FAILED (exit status {status})"
        report += [f"== {bench.name}: {state}, {seconds:.0f} s", *summary]
        if status != 0:
            failed.append(bench.name)
    text = "\n".join(report)
    print("\n######## summary\n" + text)
    if args.out:
        (args.out / "summary.txt").write_text(text + "\n")
    if failed:
        print(f"\nfailed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
