"""How many CPU threads torch uses for equiav's work, and the ``--threads`` rule every command shares.

torch runs each CPU operator on all its intra-op threads and waits at the end of the operator for the slowest one.
When another job keeps a core busy, one of those threads is often descheduled, and every operator waits for it
for up to a scheduler time slice. Large operators hide that wait; the many small operators of a small model do not:
beside one busy core on a 2-core machine, ``embed_audio`` of 500 clips with ``equiav-tiny-digits`` ran several
times slower on two threads than on one (``benchmarks/bench_threads.py`` measures the ratio). A small model gains
little from a second thread even on an idle machine, so the default is one thread for small models and torch's own
count (one per core) for larger ones, whose operators are big enough to pay for the threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import InvalidInputError

# Models whose towers are narrower than this run on one thread by default (``equiav-tiny*``, ``equiav-test``).
SMALL_MODEL_WIDTH = 384

THREADS_HELP = (
    "CPU threads for torch (default: 1 for small models such as equiav-tiny-digits, whose many small operators "
    "slow down on several threads when other jobs share the cores; one per core for larger models)"
)


def check_threads(num_threads: int | None, name: str = "num_threads") -> int | None:
    """``num_threads`` when it is None or a positive integer; else ``InvalidInputError`` naming ``name``."""
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise InvalidInputError(f"{name} must be a positive integer or None, got {num_threads!r}")
    return num_threads


def default_threads(embed_dim: int) -> int:
    """The default thread count for a model whose towers are ``embed_dim`` wide (see the module docstring)."""
    if embed_dim < SMALL_MODEL_WIDTH:
        return 1
    return torch.get_num_threads()


def resolve_threads(num_threads: int | None, embed_dim: int, name: str = "num_threads") -> int:
    """``num_threads`` if given, else the default for a model of width ``embed_dim``."""
    return check_threads(num_threads, name) or default_threads(embed_dim)


@contextmanager
def thread_limit(num_threads: int | None, embed_dim: int) -> Iterator[int]:
    """Run the block on ``num_threads`` torch threads (None: the default for the model width), then restore the
    caller's setting, so a library call leaves the process as it found it."""
    count = resolve_threads(num_threads, embed_dim)
    before = torch.get_num_threads()
    if count != before:
        torch.set_num_threads(count)
    try:
        yield count
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
