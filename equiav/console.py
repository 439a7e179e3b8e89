"""What every command does with the process around its ``main(argv)``: one-line errors and ``--threads``.

Every command takes ``--threads N`` (see ``equiav.threads`` for the default). An error stops a command with one line on stderr, ``PROG: ErrorType: message``, and exit status 1, whatever the
command (``equiav ...`` and ``python -m equiav.training.*``). ``--debug`` on the command line, or ``EQUIAV_DEBUG=1``
in the environment, lets the exception and its traceback through instead. ``main(argv)`` itself always raises, so
code that calls it sees the exception.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import torch

from .config import EquiAVConfig, list_models
from .threads import SMALL_MODEL_WIDTH, THREADS_HELP, check_threads, resolve_threads

DEBUG_ENV = "EQUIAV_DEBUG"
DEBUG_HELP = f"show the full traceback of an error (default: off; {DEBUG_ENV}=1 does the same)"


def positive_int(text: str) -> int:
    """argparse type of ``--threads``: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_runtime_arguments(parser: argparse.ArgumentParser, threads: bool = True) -> None:
    """``--debug`` and (unless the command takes its thread count from a config) ``--threads N``."""
    if threads:
        parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help=THREADS_HELP)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def set_threads(num_threads: int | None, embed_dim: int, name: str = "--threads") -> int:
    """Set torch's thread count for the rest of the command: ``num_threads``, or the default for a model of width
    ``embed_dim`` (see ``equiav.threads``). Returns the count."""
    count = resolve_threads(check_threads(num_threads, name), embed_dim, name)
    torch.set_num_threads(count)
    return count


def show_progress(progress: bool | None, batches: int) -> bool:
    """The progress-bar rule of ``embed_*`` and the CLI: ``progress`` when given, else a bar when the work takes
    more than one batch and stderr is a terminal (logs and pipes stay free of bars)."""
    if progress is not None:
        return progress
    return batches > 1 and sys.stderr.isatty()


def model_width(name: str | Path | None) -> int:
    """Tower width of a preset, or of a directory's ``config.json``, read without loading weights; other models
    (checkpoint files, hub ids) count as large."""
    if name is not None and str(name) in list_models():
        return EquiAVConfig.from_preset(str(name)).embed_dim
    config = Path(str(name)) / "config.json" if name is not None else None
    try:
        width = json.loads(config.read_text()).get("embed_dim") if config is not None else None
    except (OSError, ValueError, AttributeError):
        width = None
    return width if isinstance(width, int) else SMALL_MODEL_WIDTH


def debugging(argv: Sequence[str] = ()) -> bool:
    """Whether errors should come with their traceback: ``--debug`` among the arguments or ``EQUIAV_DEBUG`` set."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def error_line(prog: str, error: BaseException) -> str:
    """``PROG: ErrorType: message`` on one line, with a pointer to the traceback."""
    message = " ".join(str(error).split()) or repr(error)
    return f"{prog}: {type(error).__name__}: {message} (--debug or {DEBUG_ENV}=1 shows the traceback)"


def run_main(main: Callable[[list[str]], object], prog: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Run a command's ``main(argv)`` as a program: exit 0 (or the int it returns), errors as one line, exit 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(argv)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # commands that turn their own errors into one line let them through too
    try:
        result = main([arg for arg in argv if arg != "--debug"])
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as error:
        if debug:
            raise
        print(error_line(prog, error), file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(result if isinstance(result, int) else 0)
