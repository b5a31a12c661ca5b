"""Shared fixtures: Epoch AI's extraction of Chinchilla's runs and one approach-3 fit of it."""
from __future__ import annotations

from pathlib import Path

import pytest
from sample_data import write_chinchilla

from mlscale.scaling.fit import ParametricFit, fit_law
from mlscale.scaling.laws import CHINCHILLA
from mlscale.scaling.table import RunTable, read_table


@pytest.fixture(scope="session")
def chinchilla_csv(tmp_path_factory) -> Path:
    """Epoch AI's extraction of Chinchilla's figure 4: 245 runs (svg_extracted_data.csv)."""
    return write_chinchilla(tmp_path_factory.mktemp("chinchilla") / "svg_extracted_data.csv")


@pytest.fixture(scope="session")
def chinchilla_table(chinchilla_csv) -> RunTable:
    """The 245 runs with the 5 highest-loss ones dropped, as Besiroglu et al. do."""
    return read_table(chinchilla_csv).drop_highest_loss(5)


@pytest.fixture(scope="session")
def chinchilla_fit(chinchilla_table) -> ParametricFit:
    """Approach 3 from the 10 best points of Hoffmann's 4,500-point grid."""
    return fit_law(CHINCHILLA, chinchilla_table, starts=10)
