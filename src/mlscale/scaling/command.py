"""Scaling laws: IsoFLOP sweeps, law fits with bootstrap intervals, compute-optimal plans.

  mlscale scaling sweep --data TOK --out SWEEP --budgets 1e12,3e12,1e13 [--sizes 4]
        For each compute budget C, --sizes models from the depth preset around the
        compute-optimal size, each trained on D = C / flops_per_token tokens with a cosine
        schedule that ends at its budget. Resumable: finished runs are skipped, an
        interrupted one resumes. Writes SWEEP/runs.csv (N, D, C, loss, ...).
  mlscale scaling fit TABLE.csv [--law chinchilla|kaplan|isoflop] [--bootstrap B] [--out DIR]
        Chinchilla approach 3 (L = E + A/N^alpha + B/D^beta; Huber loss, delta 1e-3, on
        log-loss residuals, summed; L-BFGS-B from a grid of initialisations), Kaplan's
        L(N, D), or approach 2 (parabola per IsoFLOP profile, power laws for N_opt, D_opt).
        Prints the fit as JSON; --out DIR writes fit.json and isoflop/contours/optimal PNGs.
  mlscale scaling plan --compute C [--fit DIR/fit.json]
        N*, D*, tokens per parameter and predicted loss at C FLOPs, with bootstrap
        intervals. Without --fit: Epoch AI's refit of Chinchilla (Besiroglu et al. 2024,
        arXiv:2404.10102): E=1.817, A=482.0, B=2085.4, alpha=0.348, beta=0.366.

examples:
  mlscale scaling fit ../shared/data/chinchilla/svg_extracted_data.csv --drop-highest-loss 5 --bootstrap 200 --out chinchilla-fit
  mlscale scaling plan --compute 5.76e23 --fit chinchilla-fit/fit.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlscale.errors import ConfigError, InputError

DEFAULT_COMPUTE_EXAMPLE = 5.76e23  # Chinchilla's training budget


def _budgets(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budgets takes comma-separated FLOP counts, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"--budgets must be positive FLOP counts, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    f = sub.add_parser("fit", help="fit a scaling law to a CSV of runs (prints JSON)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("table", type=Path, help="CSV of runs (Epoch's Chinchilla extraction, or SWEEP/runs.csv)")
    f.add_argument("--law", default="chinchilla", choices=("chinchilla", "kaplan", "isoflop"),
                   help="chinchilla = approach 3; kaplan = Kaplan et al. L(N, D); isoflop = approach 2")
    f.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                   help="drop the K runs of highest loss first (Epoch AI drop 5 on Chinchilla's data)")
    f.add_argument("--bootstrap", type=int, default=0, metavar="B",
                   help="bootstrap resamples for confidence intervals (0 = none)")
    f.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    f.add_argument("--starts", type=int, default=100, metavar="K",
                   help="L-BFGS-B runs from the K best points of the initialisation grid (0 = every point)")
    f.add_argument("--c-tolerance", type=float, default=0.03, metavar="DEX",
                   help="runs whose log10 compute lie within this gap form one IsoFLOP profile")
    f.add_argument("--n-column", default=None, help="parameter column (default: 'Model Size' or 'N')")
    f.add_argument("--c-column", default=None, help="compute column (default: 'Training FLOP' or 'C')")
    f.add_argument("--d-column", default=None,
                   help="token column (default: 'Tokens' or 'D' if present, else D = C / (6N))")
    f.add_argument("--loss-column", default="loss", help="final loss column")
    f.add_argument("--out", type=Path, default=None, metavar="DIR", help="write fit.json and the plots here")
    f.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")

    p = sub.add_parser("plan", help="compute-optimal N*, D* and loss for a FLOP budget",
                       description="N*, D*, tokens per parameter and predicted loss at a compute "
                       "budget. Without --fit the law is Epoch AI's refit of Chinchilla: Besiroglu, "
                       "Erdil, Barnett, You, 'Chinchilla Scaling: A replication attempt', "
                       "arXiv:2404.10102 (2024): E=1.817, A=482.0, B=2085.4, alpha=0.348, beta=0.366.")
    p.add_argument("--compute", type=float, required=True, metavar="C",
                   help=f"training FLOPs (Chinchilla: {DEFAULT_COMPUTE_EXAMPLE:g})")
    p.add_argument("--fit", type=Path, default=None, metavar="FIT.json",
                   help="a fit.json from `mlscale scaling fit --out` (its bootstrap gives the intervals); "
                   "default: Epoch AI's refit (Besiroglu et al. 2024)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")

    s = sub.add_parser("sweep", help="train IsoFLOP profiles: several model sizes per compute budget",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--data", type=Path, required=True, metavar="TOK", help="output of `mlscale tokenize`")
    s.add_argument("--out", type=Path, required=True, metavar="SWEEP", help="sweep directory")
    s.add_argument("--budgets", type=_budgets, required=True, metavar="C1,C2,...",
                   help="training FLOP budgets, comma-separated")
    s.add_argument("--sizes", type=int, default=4, metavar="N", help="model sizes (depths) per budget")
    s.add_argument("--tokens-per-param", type=float, default=20.0, metavar="R",
                   help="prior compute-optimal D/N used to centre each profile's depths (Chinchilla: ~20)")
    s.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML pretrain config every run starts from (then --section.key=value overrides)")
    s.add_argument("--force", action="store_true", help="delete SWEEP and start over")


def _print_json(obj: dict) -> None:
    json.dump(obj, sys.stdout, indent=2, default=float)
    sys.stdout.write("\n")


def _summary(fit: dict) -> str:
    keys = [k for k in ("E", "A", "B", "alpha", "beta", "N_c", "D_c", "alpha_N", "alpha_D", "a", "b") if k in fit]
    parts = []
    for k in keys:
        ci = (fit.get("ci") or {}).get(k)
        parts.append(f"{k}={fit[k]:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""))
    return f"{fit['law']} fit on {fit['n_points']} runs: " + ", ".join(parts)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.action != "sweep" and overrides:
        raise ConfigError(f"`mlscale scaling {args.action}` takes no --section.key overrides: {' '.join(overrides)}")
    if args.action == "fit":
        from mlscale.scaling.analyze import fit_file

        if not 0 < args.level < 1:
            raise InputError(f"--level must be between 0 and 1, got {args.level}")
        body = fit_file(args.table, law=args.law, drop_highest_loss=args.drop_highest_loss,
                        n_column=args.n_column, c_column=args.c_column, d_column=args.d_column,
                        loss_column=args.loss_column, bootstrap=args.bootstrap, seed=args.seed,
                        starts=args.starts, tolerance_dex=args.c_tolerance, level=args.level, out=args.out)
        shown = {k: v for k, v in body.items() if k != "bootstrap"}
        if body.get("bootstrap"):
            shown["bootstrap"] = {k: v for k, v in body["bootstrap"].items() if k not in ("samples", "names")}
        _print_json(shown)
        print(_summary(body) + (f"; wrote {args.out / 'fit.json'}" if args.out else ""), file=sys.stderr)
        return 0
    if args.action == "plan":
        from mlscale.scaling.plan import load_fit, plan

        if not 0 < args.level < 1:
            raise InputError(f"--level must be between 0 and 1, got {args.level}")
        result = plan(args.compute, load_fit(args.fit) if args.fit else None, level=args.level)
        _print_json(result)
        ci = result.get("ci") or {}

        def fmt(k: str, spec: str) -> str:
            v = result[k]
            if v is None:
                return "n/a"
            return format(v, spec) + (f" [{format(ci[k][0], spec)}, {format(ci[k][1], spec)}]" if k in ci else "")

        print(f"C={args.compute:.3g} FLOPs: N*={fmt('N', '.3g')} params, D*={fmt('D', '.3g')} tokens, "
              f"{fmt('tokens_per_param', '.1f')} tokens/param, loss {fmt('loss', '.4f')}", file=sys.stderr)
        return 0
    from mlscale.scaling.sweep import sweep_from_cli

    return sweep_from_cli(args, overrides)
