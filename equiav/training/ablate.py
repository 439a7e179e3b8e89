"""The paper's ablations (section 4.2, Tables 4-8) as grids of pretraining runs, several seeds each.

``python -m equiav.training.ablate --grid table4 table8 --config configs/avdigits_tiny.json --seeds 0 1 2``

Every row of a grid is a set of pretraining options (``--objective.*``, ``--data.num-views``, ``--loss.intra-variant``)
on top of the base config. Each (row, seed) is one ``python -m equiav.training.pretrain`` run in its own folder, with
``--seed`` and ``--data.seed`` set to the seed; rows of different grids that resolve to the same config are trained
once. Each final model is scored with the class-level zero-shot R@1 of the run's last validation (audio -> image and
image -> audio on the held-out speakers) and the linear probe of ``equiav.training.probe`` (both towers' features).

Output folder: ``runs/<config hash>-seed<k>/`` (one pretraining run each, with ``result.json`` once scored),
``runs.json`` (every run: options, seed, metrics, seconds) and ``<grid>.md`` (mean +- sample standard deviation per
row over the seeds, in the paper's row order, beside the paper's AudioSet numbers).

Resuming: a run with a ``result.json`` is not redone; an interrupted run resumes from its newest checkpoint (exactly,
see ``equiav.training.trainer``). ``--jobs`` runs that many processes at once (``--threads`` torch threads each);
``--nproc-per-node`` launches each run under ``torchrun`` instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..console import add_runtime_arguments, run_main
from ..errors import ConfigError
from .pretrain import config_from_args

log = logging.getLogger("equiav.ablate")


@dataclass(frozen=True)
class Row:
    """One row of a grid: its label, the pretraining options that make it, and the paper's AudioSet numbers."""

    label: str
    options: tuple[str, ...]
    paper: tuple[float, float, float]  # V2A R@1, A2V R@1, AudioSet-20K fine-tuning A-V mAP


@dataclass(frozen=True)
class Grid:
    title: str
    rows: tuple[Row, ...]


def _grid(title: str, table: str) -> Grid:
    """A grid from a text table: one row per line, ``label | pretraining options | paper V2A A2V FT-A-V``."""
    rows = []
    for line in table.strip().splitlines():
        label, options, paper = (part.strip() for part in line.split("|"))
        v2a, a2v, finetune = (float(value) for value in paper.split())
        rows.append(Row(label, tuple(options.split()), (v2a, a2v, finetune)))
    return Grid(title, tuple(rows))


# The paper's AudioSet numbers per row: zero-shot V2A and A2V R@1, AudioSet-20K fine-tuning A-V mAP.
GRIDS: dict[str, Grid] = {
    "table4": _grid(
        "Table 4: intra-modal space and inter-modal embedding",
        """
        Inv. (z_a, z_v)    | --objective.intra-space invariant --objective.inter-embedding original | 25.2 24.3 42.3
        Equi. (z_a, z_v)   | --objective.inter-embedding original                                  | 28.7 28.5 44.9
        Equi. (z'_a, z'_v) | --objective.inter-embedding augmented                                 | 28.1 27.5 43.9
        Equi. (ẑ_a, ẑ_v)   | --objective.inter-embedding predicted                                 | 27.8 27.4 43.4
        Equi. (z̄_a, z̄_v)   | --objective.inter-embedding centroid                                  | 30.1 29.6 46.6
        """,
    ),
    "table5": _grid(
        "Table 5: number of equivariant representations in the centroid",
        """
        1  | --data.num-views 1  | 27.8 27.4 43.4
        4  | --data.num-views 4  | 28.3 29.0 44.9
        8  | --data.num-views 8  | 29.4 29.2 45.5
        16 | --data.num-views 16 | 30.1 29.6 46.6
        """,
    ),
    "table6": _grid(
        "Table 6: transformation predictor architecture",
        """
        Linear    | --objective.predictor linear       | 28.2 27.5 43.8
        Hypernet. | --objective.predictor hypernetwork | 29.6 29.6 44.5
        MHA       | --objective.predictor attention    | 30.1 29.6 46.6
        """,
    ),
    "table7": _grid(
        "Table 7: training strategy",
        """
        Two-Stage             | --objective.strategy two_stage   | 27.0 25.6 43.8
        Alternating iterative | --objective.strategy alternating | 28.5 29.0 44.7
        Joint                 | --objective.strategy joint       | 30.1 29.6 46.6
        """,
    ),
    "table8": _grid(
        "Table 8: intra-modal loss",
        """
        without pos (Eq. A) | --loss.intra-variant equimod       | 21.9 21.0 42.6
        with pos (Eq. 9)    | --loss.intra-variant with_positive | 30.1 29.6 46.6
        """,
    ),
}

METRICS = ("r1_image_to_audio", "r1_audio_to_image", "probe_acc")
HEADERS = ("V2A R@1", "A2V R@1", "probe acc (A-V)")


@dataclass
class Run:
    """One pretraining run of the grid: a resolved config and a seed."""

    options: tuple[str, ...]
    seed: int
    directory: Path
    rows: list[str]

    @property
    def result_file(self) -> Path:
        return self.directory / "result.json"


def plan_runs(base: list[str], grids: list[str], seeds: list[int], output: Path) -> list[Run]:
    """The distinct runs the grids need; rows that resolve to the same config (output folder aside) share a run."""
    runs: dict[str, Run] = {}
    for grid_name in grids:
        for row in GRIDS[grid_name].rows:
            options = (*base, *row.options)
            resolved = config_from_args(list(options))[0].to_dict()
            resolved.pop("output_dir")
            key = hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:12]
            for seed in seeds:
                run_id = f"{key}-seed{seed}"
                if run_id not in runs:
                    runs[run_id] = Run(options, seed, output / "runs" / run_id, [])
                runs[run_id].rows.append(f"{grid_name}/{row.label}")
    return list(runs.values())


def _command(args: argparse.Namespace, module: str, argv: list[str]) -> list[str]:
    if args.nproc_per_node > 1 and module == "equiav.training.pretrain":
        return ["torchrun", "--standalone", f"--nproc_per_node={args.nproc_per_node}", "-m", module, *argv]
    return [sys.executable, "-m", module, *argv]


def _execute(command: list[str], log_file: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    with open(log_file, "a") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise ConfigError(
            f"command failed with exit code {done.returncode} (log: {log_file}): {' '.join(command)}"
        )


def last_validation(directory: Path) -> dict[str, float]:
    """The metrics of the last validation record of a run's ``metrics.jsonl``."""
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    validations = [record for record in records if record["split"] == "val"]
    if not validations:
        raise ConfigError(f"{directory}: the run has no validation record in metrics.jsonl")
    return validations[-1]


def train_and_score(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``run`` (resuming it when interrupted), score it, write and return its ``result.json`` record."""
    if run.result_file.is_file():
        # A finished run may serve rows of grids that the run that wrote it did not plan: tabulate it under this plan's.
        return {**json.loads(run.result_file.read_text()), "rows": run.rows}
    run.directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log_file = run.directory / "log.txt"
    seed = str(run.seed)
    argv = [
        *run.options,
        "--seed",
        seed,
        "--data.seed",
        seed,
        "--output-dir",
        str(run.directory),
        "--no-progress",
    ]
    _execute(_command(args, "equiav.training.pretrain", argv), log_file, args.threads)
    validation = last_validation(run.directory)
    cfg = config_from_args(list(run.options))[0]
    probe_file = run.directory / "probe.json"
    probe = [
        "--model", str(run.directory / "final"), "--avdigits", cfg.data.path, "--modality", "both",
        "--device", cfg.device, "--output", str(probe_file),
    ]  # fmt: skip
    _execute(_command(args, "equiav.training.probe", probe), log_file, args.threads)
    record = {
        "options": list(run.options),
        "seed": run.seed,
        "rows": run.rows,
        "directory": str(run.directory),
        "r1_image_to_audio": 100 * validation["r1_image_to_audio"],
        "r1_audio_to_image": 100 * validation["r1_audio_to_image"],
        "probe_acc": json.loads(probe_file.read_text())["test"]["acc"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    run.result_file.write_text(json.dumps(record, indent=2) + "\n")
    return record


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def grid_table(grid_name: str, records: list[dict[str, Any]]) -> str:
    """Markdown table of one grid: mean ± sample standard deviation per row over its seeds, and the paper's numbers."""
    grid = GRIDS[grid_name]
    lines = [
        f"### {grid.title}",
        "",
        f"| row | seeds | {' | '.join(HEADERS)} | paper V2A | paper A2V | paper FT A-V mAP |",
        "|---|---|" + "---|" * (len(HEADERS) + 3),
    ]
    for row in grid.rows:
        mine = [r for r in records if f"{grid_name}/{row.label}" in r["rows"]]
        cells = [_cell([r[metric] for r in mine]) for metric in METRICS]
        paper = " | ".join(f"{value:.1f}" for value in row.paper)
        lines.append(f"| {row.label} | {len(mine)} | {' | '.join(cells)} | {paper} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m equiav.training.ablate",
        description="Train and score the paper's ablation grids (Tables 4-8) over several seeds; resumable.",
    )
    parser.add_argument("--grid", nargs="+", choices=sorted(GRIDS), required=True, help="grids to run")
    parser.add_argument(
        "--config", required=True, help="base pretraining config (JSON of PretrainConfig fields)"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of every row (default 0 1 2)"
    )
    parser.add_argument("--output-dir", default="runs/ablations", help="folder of the runs and tables")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    add_runtime_arguments(parser, threads=False)
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes per run (under torchrun)")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="after '--': pretraining options applied to every row (e.g. -- --max-steps 400 --device cpu)",
    )
    return parser


def run_grids(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Plan, train, score and tabulate; returns every run's record."""
    if args.jobs < 1 or args.threads < 1 or args.nproc_per_node < 1:
        raise ConfigError("--jobs, --threads and --nproc-per-node must be at least 1")
    overrides = [o for o in args.overrides if o != "--"]
    output = Path(args.output_dir)
    runs = plan_runs(["--config", args.config, *overrides], args.grid, args.seeds, output)
    pending = sum(not run.result_file.is_file() for run in runs)
    print(f"{len(runs)} runs ({pending} to train) for {', '.join(args.grid)}; output in {output}", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(lambda run: train_and_score(run, args), runs))
    output.mkdir(parents=True, exist_ok=True)
    (output / "runs.json").write_text(json.dumps(records, indent=2) + "\n")
    for grid_name in args.grid:
        table = grid_table(grid_name, records)
        (output / f"{grid_name}.md").write_text(table)
        print(table)
    return records


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    run_grids(args)


if __name__ == "__main__":
    run_main(main, "python -m equiav.training.ablate")
