"""Shared test fixtures: the location of the read-only shared data and small helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """The shared folder with fixtures and data: ``$EQUIAV_SHARED`` or ``../shared`` beside the repository."""
    return Path(os.environ.get("EQUIAV_SHARED", REPO_ROOT.parent / "shared"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n``), every worker and the processes it starts run one torch thread: workers are
    already one per core, and more threads than free cores make torch's parallel operators wait on each other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not root.is_dir():
        pytest.fail(f"shared data folder not found at {root}; set EQUIAV_SHARED")
    return root


@pytest.fixture(scope="session")
def official_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "official"


@pytest.fixture(scope="session")
def parity(official_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(official_dir / "parity.safetensors")


@pytest.fixture(scope="session")
def fbank_fixture(shared_dir: Path) -> dict[str, torch.Tensor]:
    """torchaudio's Kaldi filterbanks of the reference waveforms (``fixtures/fbank``)."""
    from safetensors.torch import load_file

    return load_file(shared_dir / "fixtures" / "fbank" / "torchaudio_kaldi_fbank.safetensors")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@contextmanager
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """The filterbank and the tiny model run fastest single-threaded on the 2-core CI machines."""
    with _single_thread():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """One intra-op thread for a whole module: on two busy cores, two OpenMP threads made each tiny forward pass
    ~80x slower."""
    with _single_thread():
        yield


@pytest.fixture(scope="module")
def tiny_model():
    """A randomly initialized ``equiav-tiny`` model in eval mode, shared by a module's cases."""
    from equiav import EquiAVModel

    torch.manual_seed(0)
    return EquiAVModel("equiav-tiny").eval()


@pytest.fixture(scope="module")
def saved_tiny(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_model`` saved with ``save_pretrained``."""
    folder = tmp_path_factory.mktemp("saved") / "tiny"
    tiny_model.save_pretrained(folder)
    return folder
