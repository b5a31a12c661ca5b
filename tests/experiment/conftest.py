"""Fixtures of the `mlscale run` tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiment_helpers import write_tiny_experiment


@pytest.fixture
def tiny_experiment(tmp_path: Path) -> Path:
    """The tiny experiment file in a fresh folder."""
    return write_tiny_experiment(tmp_path / "experiment")
