"""Fixtures of the `mlscale run` tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiment_helpers import write_tiny_experiment


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy shared machine an
    OpenMP pool that waits for a descheduled thread makes every step many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_experiment(tmp_path: Path) -> Path:
    """The tiny experiment file in a fresh folder."""
    return write_tiny_experiment(tmp_path / "experiment")
