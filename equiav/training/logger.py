"""Training logs: one JSON object per line, optional TensorBoard scalars and a tqdm progress bar, on rank 0 only.

``metrics.jsonl`` lines look like ``{"step": 120, "split": "train", "time": 1712.3, "loss": 2.31, "lr": 9.8e-05, ...}``.
When a run resumes from the checkpoint of step ``k``, lines with a step above ``k`` (written by the killed run after
its last checkpoint) are dropped first, so the file describes one consistent history.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"

log = logging.getLogger(__name__)


def _truncate_after(path: Path, step: int) -> None:
    """Keep only the lines of ``path`` whose step is at most ``step`` (rewritten atomically)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", math.inf) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


class TrainingLogger:
    """Writes metrics on the main process and does nothing elsewhere.

    ``tensorboard`` adds an event file under ``output_dir/tensorboard`` (needs the ``tensorboard`` package);
    ``progress`` shows a tqdm bar over ``total_steps`` optimizer steps, starting at ``start_step``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = False,
        progress: bool = True,
    ) -> None:
        self.enabled = enabled
        self._file = None
        self._writer = None
        self._bar = None
        self._start = time.time()
        if not enabled:
            return
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / METRICS_FILE
        if start_step > 0:
            _truncate_after(path, start_step)
        else:
            path.unlink(missing_ok=True)
        self._file = path.open("a", buffering=1)
        if tensorboard:
            self._writer = self._tensorboard_writer(output_dir / "tensorboard", start_step)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    @staticmethod
    def _tensorboard_writer(directory: Path, start_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning(
                "tensorboard is not installed; logging to metrics.jsonl only (pip install tensorboard)"
            )
            return None
        return SummaryWriter(str(directory), purge_step=start_step + 1 if start_step > 0 else None)

    def log(self, step: int, metrics: dict[str, float], split: str = "train") -> None:
        """Record ``metrics`` (plain floats) for optimizer step ``step``."""
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step, "split": split, "time": round(time.time() - self._start, 3)}
        record.update({k: float(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(f"{split}/{name}", value, step)
        if self._bar is not None and split == "train":
            shown = {k: f"{metrics[k]:.4g}" for k in ("loss", "lr") if k in metrics}
            self._bar.set_postfix(shown, refresh=False)

    def advance(self, steps: int = 1) -> None:
        """Move the progress bar by ``steps`` optimizer steps."""
        if self._bar is not None:
            self._bar.update(steps)

    def message(self, text: str) -> None:
        """A human-readable line on the main process (through tqdm so it does not break the bar)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._writer = self._file = None
