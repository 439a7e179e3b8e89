"""Shared test fixtures: the location of the read-only shared data and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """The shared folder with fixtures and data: ``$EQUIAV_SHARED`` or ``../shared`` beside the repository."""
    return Path(os.environ.get("EQUIAV_SHARED", REPO_ROOT.parent / "shared"))


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


@pytest.fixture
def one_thread():
    """The filterbank and the tiny model run fastest single-threaded on the 2-core CI machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
