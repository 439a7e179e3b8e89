"""Leave-one-speaker-out selection of AV-digits pretraining settings.

Each candidate (a name and pretraining options on top of ``--config``) is trained once per fold, with one FSDD speaker
held out (``--data.val-speakers``) and the others training, and scored on that speaker by the class-level zero-shot
R@1 of each validation (audio -> image and image -> audio against the held-out MNIST images). The table gives, per
candidate and validation step, the mean and sample standard deviation over the folds. Runs that finished are not
redone and interrupted ones resume, so the script can be run again to continue. Run from the repository root:

    python scripts/loso.py --config configs/avdigits_tiny.json --data ../shared/data \\
        --candidate base= --candidate warp="--data.audio-freq-warp 0.08" --jobs 2 \\
        -- --device cpu --precision fp32 --num-workers 0

MODEL_CARD.md reports the folds of the packaged ``equiav-tiny-digits``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SPEAKERS = ("george", "jackson", "theo", "yweweler")


@dataclass(frozen=True)
class Fold:
    candidate: str
    options: tuple[str, ...]
    speaker: str
    directory: Path


def parse_candidate(text: str) -> tuple[str, tuple[str, ...]]:
    name, sep, options = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--candidate wants NAME=OPTIONS, got {text!r}")
    return name, tuple(shlex.split(options))


def validations(directory: Path) -> list[dict]:
    """Every validation record with zero-shot numbers in a run's ``metrics.jsonl``."""
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if r["split"] == "val" and "r1_audio_to_image" in r]


def train_fold(fold: Fold, args: argparse.Namespace, overrides: list[str]) -> list[dict]:
    if not (fold.directory / "final").is_dir():
        fold.directory.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "equiav.training.pretrain", "--config", args.config, "--data.path", args.data,
            *overrides, *fold.options, "--data.val-speakers", fold.speaker,
            "--output-dir", str(fold.directory), "--no-progress",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        started = time.perf_counter()
        with open(fold.directory / "log.txt", "a") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{fold.directory}: training failed (exit {done.returncode}); see log.txt there")
        print(f"{fold.candidate} / {fold.speaker}: {time.perf_counter() - started:.0f} s", flush=True)
    return validations(fold.directory)


def table(folds: list[Fold], results: list[list[dict]]) -> str:
    lines = [
        "| candidate | step | audio->image R@1 | image->audio R@1 | per speaker (a->i / i->a) |",
        "|---|---|---|---|---|",
    ]
    by_candidate: dict[str, list[tuple[Fold, list[dict]]]] = {}
    for fold, records in zip(folds, results):
        by_candidate.setdefault(fold.candidate, []).append((fold, records))
    for name, runs in by_candidate.items():
        steps = sorted({r["step"] for _, records in runs for r in records})
        for step in steps:
            at = [(fold, next((r for r in records if r["step"] == step), None)) for fold, records in runs]
            at = [(fold, r) for fold, r in at if r is not None]
            a2i = [r["r1_audio_to_image"] for _, r in at]
            i2a = [r["r1_image_to_audio"] for _, r in at]
            each = ", ".join(
                f"{f.speaker} {r['r1_audio_to_image']:.2f}/{r['r1_image_to_audio']:.2f}" for f, r in at
            )
            lines.append(f"| {name} | {step} | {_cell(a2i)} | {_cell(i2a)} | {each} |")
    return "\n".join(lines) + "\n"


def _cell(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="base pretraining config")
    parser.add_argument("--data", required=True, help="the shared data folder (fsdd/ and mnist/)")
    parser.add_argument(
        "--candidate", action="append", type=parse_candidate, required=True, help="NAME=OPTIONS, repeatable"
    )
    parser.add_argument("--speakers", nargs="+", default=list(SPEAKERS), help="the folds' held-out speakers")
    parser.add_argument("--output-dir", default="runs/loso", help="folder of the runs and the table")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="after '--': options for every run")
    args = parser.parse_args()
    overrides = [o for o in args.overrides if o != "--"]
    output = Path(args.output_dir)
    folds = [
        Fold(name, options, speaker, output / name / speaker)
        for name, options in args.candidate
        for speaker in args.speakers
    ]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda fold: train_fold(fold, args, overrides), folds))
    records = [
        {"candidate": f.candidate, "options": list(f.options), "speaker": f.speaker, "validations": r}
        for f, r in zip(folds, results)
    ]
    (output / "loso.json").write_text(json.dumps(records, indent=2) + "\n")
    text = table(folds, results)
    (output / "loso.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
