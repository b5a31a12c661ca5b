"""NearConfig: the bands/rows rule and the S-curve optimisation behind it."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad

from mlscale.config import from_dict, load_config
from mlscale.curate.dedup.config import ExactConfig, NearConfig, lsh_probability, \
    optimal_band_rows
from mlscale.errors import ConfigError


def _reference_optimum(threshold: float, num_perm: int) -> tuple[int, int]:
    """Brute force with adaptive quadrature, as datasketch's `_optimal_param`."""
    best, best_err = None, float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = quad(lambda s: 1 - (1 - s ** r) ** b, 0.0, threshold)[0]
            fn = quad(lambda s: (1 - s ** r) ** b, threshold, 1.0)[0]
            err = 0.5 * fp + 0.5 * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


@pytest.mark.parametrize("threshold,num_perm", [(0.5, 32), (0.8, 40), (0.9, 24), (0.7, 64)])
def test_optimum_matches_quadrature_reference(threshold, num_perm):
    assert optimal_band_rows(threshold, num_perm) == _reference_optimum(threshold, num_perm)


def test_band_rows_rule():
    assert NearConfig().band_rows() == (14, 8)  # FineWeb's setting for the defaults
    assert NearConfig(threshold=0.7).band_rows() == optimal_band_rows(0.7, 112)
    assert NearConfig(num_perm=128).band_rows() == optimal_band_rows(0.8, 128)
    assert NearConfig(bands=20, rows=5).band_rows() == (20, 5)
    assert NearConfig(bands=16).band_rows() == (16, 7)
    assert NearConfig(rows=10).band_rows() == (11, 10)
    # The derived S-curve turns near the threshold.
    b, r = NearConfig(threshold=0.6).band_rows()
    assert 0.5 < (1 / b) ** (1 / r) < 0.7


def test_invalid_band_rows_name_the_key():
    with pytest.raises(ConfigError, match="near.bands \\* near.rows"):
        from_dict(NearConfig, {"bands": 20, "rows": 8})
    with pytest.raises(ConfigError, match="near.rows"):
        from_dict(NearConfig, {"rows": 200})
    with pytest.raises(ConfigError, match="threshold"):
        load_config(NearConfig, overrides=["--threshold=1.5"])
    with pytest.raises(ConfigError, match="did you mean 'num_perm'"):
        from_dict(NearConfig, {"num_perms": 64})
    assert from_dict(ExactConfig, {"normalize": "false"}).normalize is False


def test_lsh_probability_published_values():
    assert lsh_probability(0.8, 14, 8) == pytest.approx(0.924, abs=1e-3)
    assert (1 / 14) ** (1 / 8) == pytest.approx(0.719, abs=1e-3)
    s = np.linspace(0, 1, 11)
    assert np.all(np.diff(lsh_probability(s, 14, 8)) >= 0)
