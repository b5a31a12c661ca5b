"""`mlscale scaling fit` as a function: read runs, fit a law, bootstrap it, write fit.json and plots."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlscale.artifacts import atomic_write_json
from mlscale.errors import InputError, check_out_dir
from mlscale.scaling.bootstrap import Bootstrap, bootstrap_isoflop, bootstrap_law
from mlscale.scaling.fit import DEFAULT_STARTS, IsoFlopFit, fit_isoflop, fit_law
from mlscale.scaling.laws import LAWS
from mlscale.scaling.table import RunTable, read_table

FIT_CHOICES = (*LAWS, "isoflop")


def _with_intervals(body: dict[str, Any], boot: Bootstrap | None) -> dict[str, Any]:
    if boot is not None:
        body["ci"] = boot.intervals()
        body["se"] = boot.standard_errors()
        body["bootstrap"] = boot.to_dict(samples=True)
    else:
        body["ci"] = None
    return body


def fit_table(table: RunTable, *, law: str = "chinchilla", bootstrap: int = 0, seed: int = 0,
              starts: int = DEFAULT_STARTS, tolerance_dex: float = 0.03, level: float = 0.95,
              out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Fit `law` to the runs (approach 3, Kaplan, or approach 2 'isoflop'); returns the fit.json body."""
    if law not in FIT_CHOICES:
        raise InputError(f"--law {law!r} is not one of {', '.join(FIT_CHOICES)}")
    if out is not None:
        check_out_dir(out)  # before the fit, which may take minutes with a bootstrap
    started = time.time()
    fit = boot = None
    profiles: IsoFlopFit | None = None
    if law == "isoflop":
        profiles = fit_isoflop(table, tolerance_dex=tolerance_dex)
        body = profiles.to_dict()
        if bootstrap:
            boot = bootstrap_isoflop(table, profiles, bootstrap, seed=seed, level=level, progress=progress)
    else:
        fit = fit_law(LAWS[law], table, starts=starts, progress=progress)
        body = fit.to_dict()
        c_max = float(table.C.max())
        N, D = fit.law.compute_optimal(c_max, fit.params)
        body["optimum_at_largest_budget"] = {"C": c_max, "N": float(N), "D": float(D),
                                             "tokens_per_param": float(D / N)}
        if bootstrap:
            boot = bootstrap_law(table, fit, bootstrap, seed=seed, level=level, progress=progress)
        try:  # the IsoFLOP profiles are drawn with the fit when the runs have them
            profiles = fit_isoflop(table, tolerance_dex=tolerance_dex)
        except InputError:
            profiles = None
    body = _with_intervals(body, boot)
    body["table"] = table.source
    body["seconds"] = round(time.time() - started, 3)
    if out is not None:
        from mlscale.scaling.plots import write_plots  # matplotlib only when plotting

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plots = write_plots(out, table, fit, profiles, boot)
        body["plots"] = [str(p) for p in plots]
        atomic_write_json(out / "fit.json", body)
    return body


def fit_file(path: str | Path, *, law: str = "chinchilla", drop_highest_loss: int = 0,
             n_column: str | None = None, c_column: str | None = None, d_column: str | None = None,
             loss_column: str = "loss", **kwargs: Any) -> dict[str, Any]:
    """`fit_table` on a CSV of runs, after dropping the `drop_highest_loss` highest-loss runs."""
    table = read_table(path, n_column=n_column, c_column=c_column, d_column=d_column, loss_column=loss_column)
    if drop_highest_loss:
        table = table.drop_highest_loss(drop_highest_loss)
    return fit_table(table, law=law, **kwargs)
