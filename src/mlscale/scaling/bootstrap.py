"""Bootstrap confidence intervals: resample runs with replacement, refit, take percentiles.

A resample is drawn as multinomial counts over the runs (the same thing as drawing n rows
with replacement), and the refit weights each run by its count, so the data arrays never
change and the numba objective just skips runs drawn zero times. Parametric refits are
warm-started at the full fit's distinct local optima, which a resample only perturbs; a
full grid search per resample would cost a hundred times more and land in the same basin.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from mlscale.errors import InputError
from mlscale.scaling.fit import IsoFlopFit, ParametricFit, fit_isoflop, refit_weighted
from mlscale.scaling.table import RunTable


def percentile_interval(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Central `level` percentile interval along axis 0 (NaNs ignored)."""
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.nanpercentile(values, [tail, 100.0 - tail], axis=0)
    return lo, hi


@dataclass
class Bootstrap:
    """Refitted parameters of `n` resamples, one row each, in `names` order."""

    names: tuple[str, ...]
    samples: np.ndarray
    level: float
    seed: int
    failed: int = 0

    @property
    def n(self) -> int:
        return len(self.samples)

    def intervals(self) -> dict[str, list[float]]:
        lo, hi = percentile_interval(self.samples, self.level)
        return {k: [float(a), float(b)] for k, a, b in zip(self.names, lo, hi)}

    def standard_errors(self) -> dict[str, float]:
        with np.errstate(over="ignore"):  # a diverged refit's constant can square to inf
            sd = np.nanstd(self.samples, axis=0, ddof=1)
        return {k: float(s) for k, s in zip(self.names, sd)}

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"resamples": self.n, "failed": self.failed, "seed": self.seed,
                               "level": self.level, "method": "percentile, runs resampled with replacement"}
        if samples:
            out["names"] = list(self.names)
            out["samples"] = self.samples.tolist()
        return out


def _resample_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)


def bootstrap_law(table: RunTable, fit: ParametricFit, resamples: int, *, seed: int = 0,
                  level: float = 0.95, progress: bool = True) -> Bootstrap:
    """Bootstrap a parametric fit (approach 3 or Kaplan)."""
    if resamples < 2:
        raise InputError(f"--bootstrap needs at least 2 resamples, got {resamples}")
    rng = np.random.default_rng(seed)
    law = fit.law
    rows, failed = [], 0
    for _ in tqdm(range(resamples), desc=f"bootstrap {law.name}", unit="fit", disable=not progress):
        theta = refit_weighted(law, table, fit, _resample_counts(rng, len(table)))
        if np.all(np.isfinite(theta)):
            rows.append(law.from_theta_array(theta))
        else:
            failed += 1
    if len(rows) < 2:
        raise InputError(f"bootstrap: {failed} of {resamples} refits failed; the fit is not stable")
    return Bootstrap(names=law.params, samples=np.array(rows), level=level, seed=seed, failed=failed)


def bootstrap_isoflop(table: RunTable, fit: IsoFlopFit, resamples: int, *, seed: int = 0,
                      level: float = 0.95, progress: bool = True) -> Bootstrap:
    """Bootstrap approach 2: resample runs, keep each run in its profile, refit parabolas and power laws."""
    if resamples < 2:
        raise InputError(f"--bootstrap needs at least 2 resamples, got {resamples}")
    rng = np.random.default_rng(seed)
    groups = [p.index for p in fit.profiles]
    names = ("a", "b", "k_N", "k_D")
    rows, failed = [], 0
    for _ in tqdm(range(resamples), desc="bootstrap isoflop", unit="fit", disable=not progress):
        w = _resample_counts(rng, len(table))
        try:
            f = fit_isoflop(table, groups=groups, weights=w, tolerance_dex=fit.tolerance_dex)
        except InputError:
            failed += 1  # too few profiles kept a bracketed minimum in this resample
            continue
        rows.append([f.params[k] for k in names])
    if len(rows) < 2:
        raise InputError(f"bootstrap: {failed} of {resamples} IsoFLOP refits failed; the profiles "
                         "do not bracket their minima robustly")
    return Bootstrap(names=names, samples=np.array(rows), level=level, seed=seed, failed=failed)
