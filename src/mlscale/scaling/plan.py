"""Compute-optimal plans: for a FLOP budget C, the model size N*, tokens D* and predicted loss.

The plan comes from a fit (fit.json written by `mlscale scaling fit --out`); its bootstrap
samples, when present, give the intervals: every resampled law is solved for the same
budget and the percentiles of N*, D*, D*/N* and L(N*, D*) are reported. Without a fit,
the default law is Epoch AI's refit of Chinchilla (Besiroglu et al. 2024), which gives
about 20 tokens per parameter at Chinchilla's budget.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlscale.errors import InputError, read_text
from mlscale.scaling.bootstrap import percentile_interval
from mlscale.scaling.laws import EPOCH_CITATION, EPOCH_REFIT, EPOCH_REFIT_SE, LAWS

ISOFLOP_PARAMS = ("a", "b", "k_N", "k_D")


def default_fit() -> dict[str, Any]:
    """Epoch AI's published approach-3 refit, as a fit dict (no bootstrap samples)."""
    return {"law": "chinchilla", **EPOCH_REFIT, "se": dict(EPOCH_REFIT_SE), "source": EPOCH_CITATION}


def load_fit(path: str | Path) -> dict[str, Any]:
    """Read a fit.json written by `mlscale scaling fit --out`, checking it names a known law."""
    path = Path(path)
    text = read_text(path, "fit file", "write one with `mlscale scaling fit ... --out DIR`")
    try:
        fit = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}); rerun `mlscale scaling fit --out`") from None
    law = fit.get("law") if isinstance(fit, dict) else None
    names = LAWS[law].params if law in LAWS else ISOFLOP_PARAMS if law == "isoflop" else None
    if names is None:
        raise InputError(f"{path}: 'law' is {law!r}; expected one of {', '.join([*LAWS, 'isoflop'])}")
    missing = [k for k in names if not isinstance(fit.get(k), (int, float))]
    if missing:
        raise InputError(f"{path}: missing the fitted parameter(s) {', '.join(missing)}")
    fit.setdefault("source", str(path))
    return fit


def _optimum(law: str, params: dict[str, float], C: float) -> tuple[float, float, float | None]:
    """(N*, D*, predicted loss or None) for one set of parameters."""
    if law == "isoflop":
        return params["k_N"] * C ** params["a"], params["k_D"] * C ** params["b"], None
    L = LAWS[law]
    N, D = L.compute_optimal(C, params)
    return float(N), float(D), float(L.predict(N, D, params))


def plan(compute: float, fit: dict[str, Any] | None = None, level: float = 0.95) -> dict[str, Any]:
    """N*, D*, tokens per parameter and loss at `compute` FLOPs, with bootstrap intervals if the fit has them."""
    if not (compute > 0 and np.isfinite(compute)):
        raise InputError(f"--compute must be a positive number of FLOPs, got {compute}")
    fit = fit or default_fit()
    law = fit["law"]
    names = LAWS[law].params if law in LAWS else ISOFLOP_PARAMS
    params = {k: float(fit[k]) for k in names}
    N, D, loss = _optimum(law, params, compute)
    out: dict[str, Any] = {"compute": compute, "law": law, "N": N, "D": D, "tokens_per_param": D / N,
                           "loss": loss, "params": params, "source": fit.get("source")}
    if law == "isoflop":
        out["note"] = "approach 2 predicts N* and D*, not the loss; 6 N* D* / C = %.3f" % (6 * N * D / compute)
    boot = fit.get("bootstrap") or {}
    samples = boot.get("samples")
    if samples:
        cols = boot.get("names", list(names))
        rows = []
        for s in samples:
            p = dict(zip(cols, s))
            n_, d_, l_ = _optimum(law, p, compute)
            with np.errstate(invalid="ignore", divide="ignore"):
                rows.append([n_, d_, d_ / n_, np.nan if l_ is None else l_])
        rows_arr = np.array(rows, dtype=float)
        # resamples whose law has no finite optimum (non-physical refits) are left out and counted
        valid = np.isfinite(rows_arr[:, :3]).all(axis=1)
        out["invalid_resamples"] = int((~valid).sum())
        if valid.sum() < 2:
            out["ci"] = None
            return out
        lo, hi = percentile_interval(rows_arr[valid], level)
        keys = ["N", "D", "tokens_per_param", "loss"]
        out["ci"] = {k: [float(a), float(b)] for k, a, b in zip(keys, lo, hi) if np.isfinite(a)}
        out["level"] = level
        out["resamples"] = len(samples)
    else:
        out["ci"] = None
        out["note_ci"] = ("no bootstrap samples in this fit: run `mlscale scaling fit --bootstrap B "
                          "--out DIR` and pass --fit DIR/fit.json for intervals")
    return out
