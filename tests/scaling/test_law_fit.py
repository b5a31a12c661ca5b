"""Fitting: Epoch AI's refit of Chinchilla reproduced, known parameters recovered, IsoFLOP minima."""
from __future__ import annotations

import numpy as np
import pytest

from mlscale.errors import InputError
from mlscale.scaling.fit import fit_isoflop, fit_law, group_budgets
from mlscale.scaling.laws import CHINCHILLA, EPOCH_REFIT, EPOCH_REFIT_SE, KAPLAN
from mlscale.scaling.table import RunTable, read_table


def test_reads_chinchilla_csv_as_it_is(chinchilla_csv):
    table = read_table(chinchilla_csv)
    assert len(table) == 245
    assert table.source["n_column"] == "Model Size" and table.source["c_column"] == "Training FLOP"
    np.testing.assert_allclose(table.D, table.C / (6 * table.N))
    dropped = table.drop_highest_loss(5)
    assert len(dropped) == 240 and dropped.loss.max() < np.sort(table.loss)[-5]


def test_approach3_reproduces_epoch_refit_within_standard_errors(chinchilla_fit):
    fit = chinchilla_fit
    assert fit.n_points == 240
    for k, v in EPOCH_REFIT.items():
        assert abs(fit.params[k] - v) < EPOCH_REFIT_SE[k], (k, fit.params[k], v)
    # tighter than the SEs: the same optimum as Epoch's code, not a nearby early stop
    assert fit.params["E"] == pytest.approx(1.817, abs=0.005)
    assert fit.params["alpha"] == pytest.approx(0.348, abs=0.003)
    assert fit.params["beta"] == pytest.approx(0.366, abs=0.003)
    assert fit.objective == pytest.approx(1.0183e-3, rel=1e-3)


def test_averaged_objective_with_default_tolerances_stops_early(chinchilla_table, chinchilla_fit):
    # Epoch AI's point: the loss scale decides where L-BFGS-B stops. Dividing the summed
    # objective by n with scipy's default tolerances ends at a worse point.
    from scipy.optimize import minimize

    x, y, t = chinchilla_table.log_arrays
    w = np.ones_like(t)
    n = len(t)
    start = np.array([0.5, 6.0, 7.0, 0.5, 0.5])
    res = minimize(lambda z: tuple(v / n for v in CHINCHILLA.objective(z, x, y, t, w)), start, jac=True,
                   method="L-BFGS-B")
    assert res.fun * n > chinchilla_fit.objective * (1 + 1e-3)


def _synthetic(law, params, n=300, noise=0.01, seed=0) -> RunTable:
    rng = np.random.default_rng(seed)
    N = 10 ** rng.uniform(7, 10, n)
    D = 10 ** rng.uniform(9, 12, n)
    loss = law.predict(N, D, params) * np.exp(rng.normal(0, noise, n))
    return RunTable(N=N, D=D, C=6 * N * D, loss=loss)


def test_recovers_known_chinchilla_parameters_from_noisy_data():
    truth = {"E": 1.9, "A": 600.0, "B": 1200.0, "alpha": 0.36, "beta": 0.33}
    fit = fit_law(CHINCHILLA, _synthetic(CHINCHILLA, truth), starts=10)
    assert fit.params["E"] == pytest.approx(truth["E"], abs=0.03)
    assert fit.params["alpha"] == pytest.approx(truth["alpha"], abs=0.02)
    assert fit.params["beta"] == pytest.approx(truth["beta"], abs=0.02)
    assert fit.params["A"] == pytest.approx(truth["A"], rel=0.35)
    assert fit.params["B"] == pytest.approx(truth["B"], rel=0.35)
    N, D = CHINCHILLA.compute_optimal(1e22, fit.params)
    N0, D0 = CHINCHILLA.compute_optimal(1e22, truth)
    assert N == pytest.approx(N0, rel=0.25) and D == pytest.approx(D0, rel=0.25)


def test_recovers_known_kaplan_parameters():
    truth = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
    fit = fit_law(KAPLAN, _synthetic(KAPLAN, truth, n=200, noise=0.003), starts=10)
    assert fit.params["alpha_N"] == pytest.approx(truth["alpha_N"], rel=0.1)
    assert fit.params["alpha_D"] == pytest.approx(truth["alpha_D"], rel=0.1)
    # N_c and D_c are poorly identified one by one; the loss surface must still match
    table = _synthetic(KAPLAN, truth, n=50, noise=0.0, seed=3)
    np.testing.assert_allclose(KAPLAN.predict(table.N, table.D, fit.params), table.loss, rtol=0.01)


def _isoflop_profiles(params, budgets, seed=0) -> RunTable:
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        N_star, _ = CHINCHILLA.compute_optimal(C, params)
        for N in N_star * np.logspace(-0.8, 0.8, 7):
            rows.append((N, C / (6 * N), C))
    N, D, C = map(np.array, zip(*rows))
    loss = CHINCHILLA.predict(N, D, params) * np.exp(rng.normal(0, 0.002, len(N)))
    return RunTable(N=N, D=D, C=C, loss=loss)


def test_isoflop_parabolas_recover_the_allocation_exponents():
    params = dict(EPOCH_REFIT)
    table = _isoflop_profiles(params, [1e18, 1e19, 1e20, 1e21])
    fit = fit_isoflop(table)
    a_true = params["beta"] / (params["alpha"] + params["beta"])
    assert len(fit.profiles) == 4 and all(p.usable for p in fit.profiles)
    assert fit.a == pytest.approx(a_true, abs=0.03)
    assert fit.b == pytest.approx(1 - a_true, abs=0.03)
    N, D = fit.compute_optimal(1e20)
    N0, D0 = CHINCHILLA.compute_optimal(1e20, params)
    assert N == pytest.approx(N0, rel=0.2) and D == pytest.approx(D0, rel=0.2)


def test_isoflop_on_chinchilla_data_gives_hoffmann_approach2_exponents(chinchilla_table):
    fit = fit_isoflop(chinchilla_table)
    # Hoffmann et al. approach 2: a = 0.49, b = 0.51
    assert fit.a == pytest.approx(0.49, abs=0.05) and fit.b == pytest.approx(0.51, abs=0.05)


def test_isoflop_refuses_profiles_that_do_not_bracket_their_minimum():
    params = dict(EPOCH_REFIT)
    rows = []
    for C in (1e19, 1e20):
        N_star, _ = CHINCHILLA.compute_optimal(C, params)
        rows += [(N, C) for N in N_star * np.logspace(0.3, 1.2, 5)]  # all larger than optimal
    N, C = map(np.array, zip(*rows))
    table = RunTable(N=N, D=C / (6 * N), C=C, loss=CHINCHILLA.predict(N, C / (6 * N), params))
    with pytest.raises(InputError, match="minimum inside"):
        fit_isoflop(table)


def test_group_budgets_splits_on_gaps():
    C = np.array([1e19, 1.02e19, 3e19, 0.98e19, 3.05e19, 1e20])
    groups = group_budgets(C, 0.03)
    assert [sorted(g.tolist()) for g in groups] == [[0, 1, 3], [2, 4], [5]]


def test_table_errors_name_the_line_and_column(tmp_path):
    bad = tmp_path / "runs.csv"
    bad.write_text("N,C,loss\n1e8,1e19,3.1\n2e8,oops,3.0\n3e8,3e19,2.9\n")
    with pytest.raises(InputError, match=r"runs.csv:3: column 'C' is 'oops'"):
        read_table(bad)
    bad.write_text("params,C,loss\n1e8,1e19,3.1\n")
    with pytest.raises(InputError, match="--n-column"):
        read_table(bad)
    bad.write_text("N,C,loss\n1e8,1e19,-3.1\n2e8,1e19,3\n3e8,1e19,3\n")
    with pytest.raises(InputError, match="positive"):
        read_table(bad)
    with pytest.raises(InputError, match="not found"):
        read_table(tmp_path / "missing.csv")
