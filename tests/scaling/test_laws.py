"""The loss formulas: gradients, predictions and compute optima against brute force."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from mlscale.scaling.laws import CHINCHILLA, EPOCH_REFIT, HOFFMANN_FIT, KAPLAN

KAPLAN_PAPER = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}


@pytest.mark.parametrize("law,params", [(CHINCHILLA, EPOCH_REFIT), (KAPLAN, KAPLAN_PAPER)])
def test_gradient_matches_finite_differences(law, params):
    rng = np.random.default_rng(1)
    x = np.log(10 ** rng.uniform(7, 10, 60))
    y = np.log(10 ** rng.uniform(9, 12, 60))
    t = np.log(law.predict(np.exp(x), np.exp(y), params)) + rng.normal(0, 0.02, 60)
    w = rng.integers(0, 3, 60).astype(float)  # bootstrap counts, zeros included
    theta = law.to_theta(params) + rng.normal(0, 0.05, len(law.params))
    f, g = law.objective(theta, x, y, t, w)
    numeric = approx_fprime(theta, lambda z: law.objective(z, x, y, t, w)[0], 1e-7)
    np.testing.assert_allclose(g, numeric, rtol=1e-4, atol=1e-9)
    # the vectorised screening objective is the same function
    assert law.objective_grid(theta[None], x, y, t, w)[0] == pytest.approx(f, rel=1e-10)


def test_summed_huber_value_by_hand():
    # two runs, one residual inside delta (quadratic), one outside (linear)
    x = np.log(np.array([1e8, 1e9]))
    y = np.log(np.array([1e10, 1e11]))
    pred = CHINCHILLA.predict(np.exp(x), np.exp(y), EPOCH_REFIT)
    r = np.array([5e-4, -0.01])
    t = np.log(pred) + r
    f, _ = CHINCHILLA.objective(CHINCHILLA.to_theta(EPOCH_REFIT), x, y, t, np.ones(2))
    assert f == pytest.approx(0.5 * 5e-4 ** 2 + 1e-3 * (0.01 - 0.5e-3), rel=1e-9)


def test_chinchilla_formula_and_theta_round_trip():
    p = HOFFMANN_FIT
    assert CHINCHILLA.predict(1e9, 2e10, p) == pytest.approx(
        p["E"] + p["A"] / 1e9 ** p["alpha"] + p["B"] / 2e10 ** p["beta"])
    back = CHINCHILLA.from_theta(CHINCHILLA.to_theta(p))
    assert back == pytest.approx(p)


def test_kaplan_formula():
    p = KAPLAN_PAPER
    N, D = 3e8, 7e9
    expected = ((p["N_c"] / N) ** (p["alpha_N"] / p["alpha_D"]) + p["D_c"] / D) ** p["alpha_D"]
    assert KAPLAN.predict(N, D, p) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("law,params", [(CHINCHILLA, EPOCH_REFIT), (CHINCHILLA, HOFFMANN_FIT),
                                        (KAPLAN, KAPLAN_PAPER)])
def test_compute_optimum_is_the_minimum_along_the_isoflop_line(law, params):
    C = 5.76e23
    N_star, D_star = law.compute_optimal(C, params)
    assert 6 * N_star * D_star == pytest.approx(C, rel=1e-9)
    N = np.logspace(np.log10(N_star) - 1, np.log10(N_star) + 1, 20001)
    losses = law.predict(N, C / (6 * N), params)
    assert N[np.argmin(losses)] == pytest.approx(N_star, rel=2e-3)


def test_epoch_refit_gives_about_20_tokens_per_parameter_at_chinchilla_budget():
    N, D = CHINCHILLA.compute_optimal(5.76e23, EPOCH_REFIT)
    assert 15 < D / N < 25
    assert 5e10 < N < 1e11  # Chinchilla itself: 70B parameters, 1.4T tokens
