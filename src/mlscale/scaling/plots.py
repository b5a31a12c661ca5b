"""Plots of a fit (matplotlib PNGs, small enough for a README).

    isoflop.png    loss against N per compute budget, with the fitted law (or parabolas)
    contours.png   the fitted L(N, D) as contours, the runs, and the compute-optimal frontier
    optimal.png    N_opt and D_opt against C: the law's optimum (bootstrap band) and the
                   IsoFLOP profiles' minima
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mlscale.artifacts import atomic_path
from mlscale.scaling.bootstrap import Bootstrap, percentile_interval
from mlscale.scaling.fit import IsoFlopFit, ParametricFit, Profile, group_budgets
from mlscale.scaling.table import RunTable

FIGSIZE = (6.4, 4.6)
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    _pyplot().close(fig)
    return path


def _tokens_along(table: RunTable, index: np.ndarray, N: np.ndarray) -> np.ndarray:
    """D as a function of N within one profile (log-linear through its runs; C/(6N) for tables without D)."""
    slope, icpt = np.polyfit(np.log(table.N[index]), np.log(table.D[index]), 1)
    return np.exp(slope * np.log(N) + icpt)


def plot_isoflop(table: RunTable, profiles: IsoFlopFit | None, fit: ParametricFit | None, path: Path) -> Path:
    """Loss against N for each IsoFLOP profile, with the law along the profile or the parabola."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    if profiles is not None:
        groups = profiles.profiles
    else:  # approach 2 could not fit the profiles: still draw the runs by budget with the law
        groups = [Profile(C=float(np.exp(np.log(table.C[g]).mean())), index=g, coef=np.zeros(3), N_opt=np.nan,
                          D_opt=np.nan, loss_opt=np.nan, bracketed=False, usable=False)
                  for g in group_budgets(table.C, 0.03) if len(g) >= 2]
    cmap = plt.get_cmap("viridis")
    logc = np.log10([p.C for p in groups]) if groups else np.array([])
    span = (logc.min(), max(logc.max(), logc.min() + 1e-9)) if len(logc) else (0, 1)
    in_profile = np.zeros(len(table), bool)
    for p, lc in zip(groups, logc):
        color = cmap(0.9 * (lc - span[0]) / (span[1] - span[0]))
        in_profile[p.index] = True
        n = table.N[p.index]
        ax.scatter(n, table.loss[p.index], s=14, color=color, label=f"C = {p.C:.2g}")
        grid = np.logspace(np.log10(n.min()) - 0.15, np.log10(n.max()) + 0.15, 100)
        if fit is not None:
            curve = fit.law.predict(grid, _tokens_along(table, p.index, grid), fit.params)
            ax.plot(grid, curve, color=color, lw=1.2)
            best = np.argmin(curve)
            ax.scatter([grid[best]], [curve[best]], marker="*", s=80, color=color, edgecolor="k", zorder=3)
        elif profiles is not None:
            ax.plot(grid, np.polyval(p.coef, np.log10(grid)), color=color, lw=1.2, ls="-" if p.usable else "--")
            if p.usable:
                ax.scatter([p.N_opt], [p.loss_opt], marker="*", s=80, color=color, edgecolor="k", zorder=3)
    if (~in_profile).any():
        ax.scatter(table.N[~in_profile], table.loss[~in_profile], s=8, color="0.75", label="other runs", zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final loss")
    what = f"{fit.law.name} fit along each profile" if fit is not None else "parabola per profile"
    ax.set_title(f"IsoFLOP profiles ({what}; minima starred)", fontsize=10)
    if groups:
        ax.legend(fontsize=7, ncol=2 if len(groups) > 6 else 1, loc="upper right")
    return _save(fig, path)


def plot_contours(table: RunTable, fit: ParametricFit, path: Path) -> Path:
    """Fitted loss contours over (N, D), the runs, and the compute-optimal frontier."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    lo_n, hi_n = np.log10(table.N.min()) - 0.5, np.log10(table.N.max()) + 1.0
    lo_d, hi_d = np.log10(table.D.min()) - 0.5, np.log10(table.D.max()) + 1.0
    N, D = np.meshgrid(np.logspace(lo_n, hi_n, 160), np.logspace(lo_d, hi_d, 160))
    L = fit.law.predict(N.ravel(), D.ravel(), fit.params).reshape(N.shape)
    levels = np.quantile(L, np.linspace(0.02, 0.98, 14))
    cs = ax.contourf(N, D, L, levels=np.unique(levels), cmap="magma_r", alpha=0.85)
    fig.colorbar(cs, ax=ax, label="fitted loss")
    ax.scatter(table.N, table.D, c="w", s=9, edgecolor="k", linewidths=0.4, label="runs")
    C = np.logspace(np.log10(6 * 10 ** lo_n * 10 ** lo_d), np.log10(6 * 10 ** hi_n * 10 ** hi_d), 200)
    n_opt, d_opt = fit.law.compute_optimal(C, fit.params)
    ok = (n_opt >= 10 ** lo_n) & (n_opt <= 10 ** hi_n) & (d_opt >= 10 ** lo_d) & (d_opt <= 10 ** hi_d)
    ax.plot(n_opt[ok], d_opt[ok], color="c", lw=2, label="compute-optimal N*, D*")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(10 ** lo_n, 10 ** hi_n)
    ax.set_ylim(10 ** lo_d, 10 ** hi_d)
    ax.set_xlabel("parameters N")
    ax.set_ylabel("tokens D")
    ax.set_title(f"{fit.law.formula}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_optimal(table: RunTable, profiles: IsoFlopFit | None, fit: ParametricFit | None,
                 boot: Bootstrap | None, path: Path) -> Path:
    """N_opt and D_opt against compute: the fitted law (with its bootstrap band) and the profile minima."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    C = np.logspace(np.log10(table.C.min()) - 0.5, np.log10(table.C.max()) + 2.0, 120)
    if fit is not None:
        n_opt, d_opt = fit.law.compute_optimal(C, fit.params)
        label = fit.law.name
    else:
        n_opt, d_opt = profiles.compute_optimal(C)  # type: ignore[union-attr]
        label = f"N ~ C^{profiles.a:.3f}, D ~ C^{profiles.b:.3f}"  # type: ignore[union-attr]
    ax.plot(C, n_opt, color="tab:blue", label=f"N_opt ({label})")
    ax.plot(C, d_opt, color="tab:orange", label=f"D_opt ({label})")
    if boot is not None and boot.n >= 2:
        band_n, band_d = [], []
        for row in boot.samples:
            p = dict(zip(boot.names, row))
            if fit is not None:
                n_, d_ = fit.law.compute_optimal(C, p)
            else:
                n_, d_ = p["k_N"] * C ** p["a"], p["k_D"] * C ** p["b"]
            band_n.append(n_)
            band_d.append(d_)
        for band, color in ((np.array(band_n), "tab:blue"), (np.array(band_d), "tab:orange")):
            lo, hi = percentile_interval(band, boot.level)
            ax.fill_between(C, lo, hi, color=color, alpha=0.2, lw=0)
    if profiles is not None:
        used = [p for p in profiles.profiles if p.usable]
        ax.scatter([p.C for p in used], [p.N_opt for p in used], color="tab:blue", edgecolor="k",
                   zorder=3, label="IsoFLOP minima N")
        ax.scatter([p.C for p in used], [p.D_opt for p in used], color="tab:orange", edgecolor="k",
                   marker="s", zorder=3, label="IsoFLOP minima D")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("compute-optimal N (params) and D (tokens)")
    ax.set_title("compute-optimal allocation" + (f" ({int(100 * boot.level)}% bootstrap band)" if boot else ""),
                 fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(out_dir: Path, table: RunTable, fit: ParametricFit | None, profiles: IsoFlopFit | None,
                boot: Bootstrap | None) -> list[Path]:
    """All plots that apply to this fit, into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_isoflop(table, profiles, fit, out_dir / "isoflop.png")]
    if fit is not None:
        paths.append(plot_contours(table, fit, out_dir / "contours.png"))
    if fit is not None or profiles is not None:
        paths.append(plot_optimal(table, profiles, fit, boot, out_dir / "optimal.png"))
    return paths
