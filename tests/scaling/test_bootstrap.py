"""Bootstrap intervals: Epoch AI's standard errors reproduced, reproducible, warm starts honest."""
from __future__ import annotations

import numpy as np
import pytest

from mlscale.errors import InputError
from mlscale.scaling.bootstrap import bootstrap_isoflop, bootstrap_law, percentile_interval
from mlscale.scaling.fit import fit_isoflop
from mlscale.scaling.laws import EPOCH_REFIT_SE


@pytest.fixture(scope="module")
def chinchilla_boot(chinchilla_table, chinchilla_fit):
    return bootstrap_law(chinchilla_table, chinchilla_fit, 30, seed=0, progress=False)


def test_bootstrap_standard_errors_match_epoch(chinchilla_boot, chinchilla_fit):
    boot = chinchilla_boot
    assert boot.n == 30 and boot.failed == 0
    se = boot.standard_errors()
    # 30 resamples estimate an SE to ~15%; B's sampling distribution is long-tailed
    for k in ("E", "A", "alpha", "beta"):
        assert 0.5 < se[k] / EPOCH_REFIT_SE[k] < 2.0, (k, se[k])
    assert 0.4 < se["B"] / EPOCH_REFIT_SE["B"] < 3.0
    ci = boot.intervals()
    for k, v in chinchilla_fit.params.items():
        assert ci[k][0] < v < ci[k][1]
        # the 95% interval spans roughly +/- 2 SE, as Epoch's intervals do
        assert 1.5 * EPOCH_REFIT_SE[k] < ci[k][1] - ci[k][0] < 10 * EPOCH_REFIT_SE[k]


def test_bootstrap_is_reproducible_with_its_seed(chinchilla_table, chinchilla_fit):
    a = bootstrap_law(chinchilla_table, chinchilla_fit, 3, seed=7, progress=False)
    b = bootstrap_law(chinchilla_table, chinchilla_fit, 3, seed=7, progress=False)
    np.testing.assert_array_equal(a.samples, b.samples)
    c = bootstrap_law(chinchilla_table, chinchilla_fit, 3, seed=8, progress=False)
    assert not np.array_equal(a.samples, c.samples)


def test_weighted_refit_equals_a_fit_on_duplicated_rows(chinchilla_table, chinchilla_fit):
    # a resample's counts as weights must give the fit of the resampled rows themselves
    from mlscale.scaling.fit import minimize_from, refit_weighted

    rng = np.random.default_rng(3)
    counts = rng.multinomial(len(chinchilla_table), np.full(len(chinchilla_table), 1 / len(chinchilla_table)))
    theta_w = refit_weighted(chinchilla_fit.law, chinchilla_table, chinchilla_fit, counts.astype(float))
    rows = chinchilla_table.subset(np.repeat(np.arange(len(chinchilla_table)), counts))
    x, y, t = rows.log_arrays
    best = minimize_from(chinchilla_fit.law, np.array(chinchilla_fit.optima), x, y, t, np.ones_like(t))[0]
    np.testing.assert_allclose(theta_w, best[1], rtol=1e-5, atol=1e-6)


def test_isoflop_bootstrap(chinchilla_table):
    fit = fit_isoflop(chinchilla_table)
    boot = bootstrap_isoflop(chinchilla_table, fit, 30, seed=1, progress=False)
    ci = boot.intervals()
    assert ci["a"][0] < fit.a < ci["a"][1] and ci["b"][0] < fit.b < ci["b"][1]
    assert 0.005 < ci["a"][1] - ci["a"][0] < 0.2


def test_percentile_interval_and_bad_resample_count(chinchilla_table, chinchilla_fit):
    lo, hi = percentile_interval(np.arange(101.0)[:, None], 0.9)
    assert lo[0] == pytest.approx(5.0) and hi[0] == pytest.approx(95.0)
    with pytest.raises(InputError, match="at least 2"):
        bootstrap_law(chinchilla_table, chinchilla_fit, 1)
