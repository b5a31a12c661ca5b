"""A table of training runs for fitting: parameters N, tokens D, compute C and final loss.

Reads any CSV whose columns are named by options; the defaults read Epoch AI's extraction
of Chinchilla's figure 4 (`Model Size`, `Training FLOP`, `loss`) and the `runs.csv` that
`mlscale scaling sweep` writes (`N`, `D`, `C`, `loss`) as they are. Without a token
column, D = C / (6 N) (training FLOPs C = 6 N D).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlscale.errors import InputError, read_text

# candidates tried in order when a column option is not given
N_COLUMNS = ("Model Size", "N")
C_COLUMNS = ("Training FLOP", "C")
D_COLUMNS = ("Tokens", "D")


@dataclass
class RunTable:
    """Runs as arrays of equal length (N parameters, D tokens, C FLOPs, final loss)."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, index: np.ndarray) -> "RunTable":
        return RunTable(self.N[index], self.D[index], self.C[index], self.loss[index], dict(self.source))

    def drop_highest_loss(self, k: int) -> "RunTable":
        """Without the k runs of highest loss (Besiroglu et al. drop 5 such outliers)."""
        if k < 0:
            raise InputError(f"--drop-highest-loss must be >= 0, got {k}")
        if k >= len(self) - 2:
            raise InputError(f"--drop-highest-loss {k} would leave {len(self) - k} of {len(self)} runs; "
                             "a fit needs more")
        keep = np.sort(np.argsort(self.loss, kind="stable")[:len(self) - k])
        out = self.subset(keep)
        out.source["dropped_highest_loss"] = k
        return out

    @property
    def log_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log N, log D, log loss), contiguous float64, as the objective kernels want them."""
        return (np.ascontiguousarray(np.log(self.N)), np.ascontiguousarray(np.log(self.D)),
                np.ascontiguousarray(np.log(self.loss)))


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str,
          path: Path, required: bool, option: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise InputError(f"{path}: no column '{wanted}' for {what} (columns: {', '.join(columns)}); "
                             f"name the right one with {option}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    if required:
        raise InputError(f"{path}: no {what} column (looked for {', '.join(repr(c) for c in candidates)}; "
                         f"columns: {', '.join(columns)}); name it with {option}")
    return None


def read_table(path: str | Path, *, n_column: str | None = None, c_column: str | None = None,
               d_column: str | None = None, loss_column: str = "loss") -> RunTable:
    """Read runs from a CSV; every value must be a positive number (errors name line and column)."""
    path = Path(path)
    text = read_text(path, "run table", "expected a CSV of runs with a header row")
    try:
        return _parse_table(path, text, n_column, c_column, d_column, loss_column)
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV ({e})") from None


def _parse_table(path: Path, text: str, n_column: str | None, c_column: str | None,
                 d_column: str | None, loss_column: str) -> RunTable:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = list(reader.fieldnames or [])
    if not columns:
        raise InputError(f"{path} is empty; expected a CSV with a header row")
    n_col = _pick(columns, n_column, N_COLUMNS, "parameter count", path, True, "--n-column")
    loss_col = _pick(columns, loss_column, (), "loss", path, True, "--loss-column")
    c_col = _pick(columns, c_column, C_COLUMNS, "compute", path, False, "--c-column")
    d_col = _pick(columns, d_column, D_COLUMNS, "token count", path, False, "--d-column")
    if c_col is None and d_col is None:
        raise InputError(f"{path}: needs a compute column (--c-column) or a token column "
                         f"(--d-column); columns: {', '.join(columns)}")
    wanted = [c for c in (n_col, c_col, d_col, loss_col) if c is not None]
    values: dict[str, list[float]] = {c: [] for c in wanted}
    for line, row in enumerate(reader, start=2):
        for c in wanted:
            raw = (row.get(c) or "").strip()
            try:
                v = float(raw)
            except ValueError:
                raise InputError(f"{path}:{line}: column '{c}' is {raw!r}, not a number") from None
            if not (math.isfinite(v) and v > 0):
                raise InputError(f"{path}:{line}: column '{c}' is {raw!r}; it must be a positive number")
            values[c].append(v)
    if len(values[loss_col]) < 3:
        raise InputError(f"{path}: {len(values[loss_col])} runs; a fit needs at least 3")
    N = np.array(values[n_col])
    loss = np.array(values[loss_col])
    if d_col is not None:
        D = np.array(values[d_col])
        C = np.array(values[c_col]) if c_col is not None else 6.0 * N * D
    else:
        C = np.array(values[c_col])  # type: ignore[index]
        D = C / (6.0 * N)
    source = {"table": str(path), "n_column": n_col, "c_column": c_col, "d_column": d_col,
              "loss_column": loss_col, "rows": len(loss),
              "tokens": "from column" if d_col else "D = C / (6 N)"}
    return RunTable(N=N, D=D, C=C, loss=loss, source=source)
