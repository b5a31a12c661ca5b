"""Fitting scaling laws to runs: Chinchilla approach 3, Kaplan's L(N, D), approach 2 (IsoFLOP).

Parametric laws (approach 3 and Kaplan) are fitted as Hoffmann et al. and Besiroglu et al.
(Epoch AI) do: minimise the Huber loss (delta 1e-3) of log-loss residuals, SUMMED over
runs, in the log-sum-exp parametrisation, with scipy's L-BFGS-B from a grid of
initialisations. Two things matter and both are easy to get wrong:

* the loss scale: a summed Huber objective is ~1e-3 here, an averaged one ~1e-5, and
  L-BFGS-B's default tolerances (relative to max(|f|, 1)) then stop far from the optimum.
  We keep the sum and set tolerances far below the objective's scale (ftol 1e-15,
  gtol 1e-12, maxiter 10,000), so the optimiser stops at the optimum, not before it.
* the grid: the objective has several local optima. We evaluate it on the whole grid
  (Hoffmann's 4,500 points for approach 3; cheap, vectorised), then run L-BFGS-B from the
  `starts` best grid points (default 100; 0 = from every grid point, as Epoch's code).

Approach 2 fits a parabola of loss in log N to each IsoFLOP profile (runs grouped by
compute budget); the minima give N_opt(C) = k_N C^a and D_opt(C) = k_D C^b by least
squares in log-log space.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from tqdm import tqdm

from mlscale.errors import InputError
from mlscale.scaling.laws import HUBER_DELTA, Law
from mlscale.scaling.table import RunTable

LBFGS_OPTIONS = {"maxiter": 10_000, "maxfun": 20_000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20}
DEFAULT_STARTS = 100
MAX_WARM_STARTS = 3  # distinct local optima kept to warm-start bootstrap refits


# ------------------------------------------------------------------ parametric (approach 3)
@dataclass
class ParametricFit:
    """A fitted parametric law, with the distinct local optima the grid found."""

    law: Law
    params: dict[str, float]
    objective: float                 # summed Huber loss at the optimum
    n_points: int
    starts: int                      # L-BFGS-B runs
    grid_points: int
    converged: int                   # runs scipy reported as converged
    optima: list[np.ndarray] = field(default_factory=list)  # theta of distinct optima, best first
    delta: float = HUBER_DELTA

    @property
    def theta(self) -> np.ndarray:
        return self.optima[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "law": self.law.name,
            "formula": self.law.formula,
            **self.params,
            "n_points": self.n_points,
            "loss": {"objective": "huber of log-loss residuals, summed", "delta": self.delta,
                     "value": self.objective},
            "optimizer": {"method": "L-BFGS-B", "grid_points": self.grid_points, "starts": self.starts,
                          "converged": self.converged, "distinct_optima": len(self.optima),
                          **{k: v for k, v in LBFGS_OPTIONS.items()}},
        }


def minimize_from(law: Law, starts: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray,
                  w: np.ndarray, delta: float = HUBER_DELTA,
                  progress: bool = False) -> list[tuple[float, np.ndarray, bool]]:
    """L-BFGS-B from each row of `starts`: [(objective, theta, converged)], best first."""
    results = []
    bounds = list(law.bounds) if any(b != (None, None) for b in law.bounds) else None
    for theta0 in tqdm(starts, desc=f"fit {law.name}", unit="start", disable=not progress):
        res = minimize(law.objective, np.asarray(theta0, float), args=(x, y, t, w, delta), jac=True,
                       method="L-BFGS-B", bounds=bounds, options=LBFGS_OPTIONS)
        # with few runs the optimum can lie at infinity (a constant running off to e^1000):
        # such a start did not find a law
        if np.isfinite(res.fun) and np.all(np.isfinite(law.from_theta_array(res.x))):
            results.append((float(res.fun), res.x, bool(res.success)))
    results.sort(key=lambda r: r[0])
    return results


def distinct_optima(results: list[tuple[float, np.ndarray, bool]], limit: int = MAX_WARM_STARTS,
                    rtol: float = 1e-6) -> list[np.ndarray]:
    """The best theta of each distinct objective value (runs ending at the same optimum merge)."""
    out: list[np.ndarray] = []
    seen: list[float] = []
    for f, theta, _ in results:
        if any(abs(f - s) <= rtol * max(abs(s), 1e-300) for s in seen):
            continue
        seen.append(f)
        out.append(theta)
        if len(out) == limit:
            break
    return out


def fit_law(law: Law, table: RunTable, *, starts: int = DEFAULT_STARTS, delta: float = HUBER_DELTA,
            weights: np.ndarray | None = None, progress: bool = False) -> ParametricFit:
    """Fit `law` to the runs: grid screening, then L-BFGS-B from the best `starts` grid points."""
    x, y, t = table.log_arrays
    w = np.ones_like(t) if weights is None else np.ascontiguousarray(weights, dtype=float)
    grid = law.init_grid()
    if starts and starts < len(grid):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            screen = law.objective_grid(grid, x, y, t, w, delta)
        screen = np.where(np.isfinite(screen), screen, np.inf)
        chosen = grid[np.argsort(screen, kind="stable")[:starts]]
    else:
        chosen = grid
    results = minimize_from(law, chosen, x, y, t, w, delta, progress)
    if not results:
        raise InputError(f"{law.name} fit diverged from every initialisation: {len(table)} runs do not "
                         f"determine its {len(law.params)} parameters ({table.source.get('table', 'data')}); "
                         "add runs at more sizes and budgets")
    best_f, best_theta, _ = results[0]
    return ParametricFit(law=law, params=law.from_theta(best_theta), objective=best_f,
                         n_points=int(round(w.sum())), starts=len(chosen), grid_points=len(grid),
                         converged=sum(r[2] for r in results), optima=distinct_optima(results), delta=delta)


def refit_weighted(law: Law, table: RunTable, fit: ParametricFit, weights: np.ndarray) -> np.ndarray:
    """Refit with per-run weights (bootstrap counts), warm-started at the fit's distinct optima."""
    x, y, t = table.log_arrays
    results = minimize_from(law, np.array(fit.optima), x, y, t,
                            np.ascontiguousarray(weights, dtype=float), fit.delta)
    return results[0][1] if results else np.full(len(law.params), np.nan)


# -------------------------------------------------------------------- IsoFLOP (approach 2)
@dataclass
class Profile:
    """One IsoFLOP profile: runs at one compute budget and the parabola through them."""

    C: float                 # the budget (geometric mean of the group's compute)
    index: np.ndarray        # rows of the table in this profile
    coef: np.ndarray         # loss = c2 u^2 + c1 u + c0, u = log10 N
    N_opt: float
    D_opt: float
    loss_opt: float
    bracketed: bool          # the minimum lies inside the sampled sizes
    usable: bool             # convex and bracketed: used for the power laws

    def to_dict(self) -> dict[str, Any]:
        return {"C": self.C, "runs": int(len(self.index)), "N_opt": self.N_opt, "D_opt": self.D_opt,
                "loss_opt": self.loss_opt, "parabola_log10N": [float(c) for c in self.coef],
                "bracketed": self.bracketed, "used": self.usable}


@dataclass
class IsoFlopFit:
    """Approach 2: N_opt = k_N C^a and D_opt = k_D C^b from the profiles' minima."""

    a: float
    b: float
    k_N: float
    k_D: float
    profiles: list[Profile]
    n_points: int
    tolerance_dex: float

    @property
    def params(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "k_N": self.k_N, "k_D": self.k_D}

    def compute_optimal(self, C: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        C = np.asarray(C, float)
        return self.k_N * C ** self.a, self.k_D * C ** self.b

    def to_dict(self) -> dict[str, Any]:
        return {"law": "isoflop", "formula": "N_opt = k_N C^a, D_opt = k_D C^b (parabola minima per "
                "IsoFLOP profile)", **self.params, "n_points": self.n_points,
                "tolerance_dex": self.tolerance_dex, "profiles": [p.to_dict() for p in self.profiles]}


def group_budgets(C: np.ndarray, tolerance_dex: float) -> list[np.ndarray]:
    """Indices of runs grouped by compute: sorted log10 C split where a gap exceeds the tolerance."""
    order = np.argsort(np.log10(C), kind="stable")
    logc = np.log10(C)[order]
    cuts = np.nonzero(np.diff(logc) > tolerance_dex)[0] + 1
    return [np.sort(g) for g in np.split(order, cuts)]


def fit_profile(table: RunTable, index: np.ndarray, weights: np.ndarray | None = None) -> Profile | None:
    """The parabola of loss against log10 N for one profile; None if it cannot be fitted."""
    u = np.log10(table.N[index])
    w = np.ones(len(index)) if weights is None else weights
    if np.count_nonzero(w) < 3 or len(np.unique(u[w > 0])) < 3:
        return None
    center = np.average(u, weights=w)
    # np.polyfit weights multiply residuals, so sqrt(count) weights the squares by count
    coef = np.polyfit(u - center, table.loss[index], 2, w=np.sqrt(w))
    c2, c1, c0 = coef
    C = float(10 ** np.average(np.log10(table.C[index]), weights=w))
    convex = c2 > 0
    u_opt = center - c1 / (2 * c2) if convex else float(u[np.argmin(table.loss[index])])
    bracketed = bool(convex and u[w > 0].min() <= u_opt <= u[w > 0].max())
    N_opt = float(10 ** u_opt)
    # tokens at the optimum: interpolate log D against log N within the profile (exact when
    # the table holds D), which is C / (6 N) for tables without a token column
    dslope, dint = np.polyfit(u, np.log10(table.D[index]), 1, w=np.sqrt(w))
    D_opt = float(10 ** (dslope * u_opt + dint))
    loss_opt = float(np.polyval(coef, u_opt - center))
    # store the parabola in absolute log10 N: expand c2 (u - m)^2 + c1 (u - m) + c0
    abs_coef = np.array([c2, c1 - 2 * c2 * center, c2 * center ** 2 - c1 * center + c0])
    return Profile(C=C, index=index, coef=abs_coef, N_opt=N_opt, D_opt=D_opt, loss_opt=loss_opt,
                   bracketed=bracketed, usable=bool(convex and bracketed))


def power_law(C: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """Least squares of log10 Y = exponent * log10 C + log10 k: (exponent, k)."""
    slope, intercept = np.polyfit(np.log10(C), np.log10(Y), 1)
    return float(slope), float(10 ** intercept)


def fit_isoflop(table: RunTable, *, tolerance_dex: float = 0.03, min_runs: int = 3,
                groups: list[np.ndarray] | None = None, weights: np.ndarray | None = None) -> IsoFlopFit:
    """Approach 2 on the runs: profiles by compute budget, parabola minima, then power laws."""
    if groups is None:
        groups = [g for g in group_budgets(table.C, tolerance_dex) if len(g) >= min_runs]
    profiles = []
    for g in groups:
        p = fit_profile(table, g, None if weights is None else weights[g])
        if p is not None:
            profiles.append(p)
    usable = [p for p in profiles if p.usable]
    if len(usable) < 2:
        found = ", ".join(f"C={p.C:.3g} ({len(p.index)} runs, "
                          f"{'bracketed' if p.bracketed else 'minimum outside the sizes or not convex'})"
                          for p in profiles) or "none"
        raise InputError(f"IsoFLOP fit needs at least 2 profiles whose parabola has a minimum inside "
                         f"their model sizes; found: {found}. Add sizes around the optimum, or "
                         f"widen --c-tolerance (now {tolerance_dex} dex) if budgets were split")
    Cs = np.array([p.C for p in usable])
    a, k_N = power_law(Cs, np.array([p.N_opt for p in usable]))
    b, k_D = power_law(Cs, np.array([p.D_opt for p in usable]))
    n = len(table) if weights is None else int(round(weights.sum()))
    return IsoFlopFit(a=a, b=b, k_N=k_N, k_D=k_D, profiles=profiles, n_points=n, tolerance_dex=tolerance_dex)
