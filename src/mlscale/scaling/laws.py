"""The loss formulas: Chinchilla's L(N, D) and Kaplan's L(N, D), and their compute optima.

Both laws are fitted in log space with the log-sum-exp parametrisation of Hoffmann et al.
(2022, appendix D.2): the free parameters are logs of the scale constants, so every
parameter lives on a similar scale and a positive constant can never turn negative.
Each law provides

    predict(N, D, params)          -> loss
    compute_optimal(C, params)     -> (N*, D*) minimising the loss subject to C = 6 N D
    objective(theta, x, y, t, w)   -> summed Huber loss on log-loss residuals, and its gradient

where x = log N, y = log D, t = log loss and w are per-row weights (bootstrap counts).
The objective and gradient are a numba kernel: the fit calls them hundreds of thousands
of times and scipy's L-BFGS-B needs the exact gradient to converge tightly.
"""
from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np

HUBER_DELTA = 1e-3  # Hoffmann et al. and Besiroglu et al.: Huber delta on log-loss residuals

# Besiroglu, Erdil, Barnett, You (Epoch AI, 2024), "Chinchilla Scaling: A replication
# attempt", arXiv:2404.10102, eq. (4): approach 3 refit on the data extracted from
# Chinchilla's figure 4 (the 5 highest-loss points dropped), with standard errors.
EPOCH_REFIT: dict[str, float] = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
EPOCH_REFIT_SE: dict[str, float] = {"E": 0.026, "A": 124.58, "B": 1293.23, "alpha": 0.015, "beta": 0.021}
EPOCH_CITATION = ("Besiroglu et al. (Epoch AI), 'Chinchilla Scaling: A replication attempt', "
                  "arXiv:2404.10102 (2024)")
# Hoffmann et al. (2022), 'Training Compute-Optimal Large Language Models', eq. (10).
HOFFMANN_FIT: dict[str, float] = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


# ------------------------------------------------------------------------ numba kernels
@numba.njit(cache=True)
def _huber(r: float, delta: float) -> tuple[float, float]:
    """Huber loss of residual r and its derivative d/dr: quadratic inside |r| <= delta."""
    if abs(r) <= delta:
        return 0.5 * r * r, r
    return delta * (abs(r) - 0.5 * delta), (delta if r > 0 else -delta)


@numba.njit(cache=True)
def _chinchilla_objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray,
                          w: np.ndarray, delta: float, grad: np.ndarray) -> float:
    """Summed Huber(log L - LSE(e, a - alpha x, b - beta y)); gradient into `grad`.

    theta = (e, a, b, alpha, beta) with E = exp(e), A = exp(a), B = exp(b).
    """
    e, a, b, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
    for k in range(5):
        grad[k] = 0.0
    f = 0.0
    for i in range(x.shape[0]):
        if w[i] == 0.0:
            continue
        u1 = a - alpha * x[i]
        u2 = b - beta * y[i]
        m = max(u1, u2, e)
        e1 = math.exp(u1 - m)
        e2 = math.exp(u2 - m)
        e3 = math.exp(e - m)
        s = e1 + e2 + e3
        r = t[i] - (m + math.log(s))
        h, d = _huber(r, delta)
        f += w[i] * h
        c = -w[i] * d / s  # d f / d pred, divided by s so that c * e_k = dpred/du_k * df/dpred
        grad[0] += c * e3
        grad[1] += c * e1
        grad[2] += c * e2
        grad[3] -= c * e1 * x[i]
        grad[4] -= c * e2 * y[i]
    return f


@numba.njit(cache=True)
def _kaplan_objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray,
                      w: np.ndarray, delta: float, grad: np.ndarray) -> float:
    """Summed Huber(log L - alpha_D * LSE(r (log N_c - x), log D_c - y)), r = alpha_N / alpha_D."""
    lnc, ldc, an, ad = theta[0], theta[1], theta[2], theta[3]
    for k in range(4):
        grad[k] = 0.0
    f = 0.0
    ratio = an / ad
    for i in range(x.shape[0]):
        if w[i] == 0.0:
            continue
        u1 = ratio * (lnc - x[i])
        u2 = ldc - y[i]
        m = max(u1, u2)
        e1 = math.exp(u1 - m)
        e2 = math.exp(u2 - m)
        s = e1 + e2
        lse = m + math.log(s)
        p1 = e1 / s
        p2 = e2 / s
        r = t[i] - ad * lse
        h, d = _huber(r, delta)
        f += w[i] * h
        c = -w[i] * d  # d f / d pred
        grad[0] += c * an * p1
        grad[1] += c * ad * p2
        grad[2] += c * p1 * (lnc - x[i])
        grad[3] += c * (lse - p1 * u1)
    return f


# ----------------------------------------------------------------------------- the laws
@dataclass(frozen=True)
class Law(ABC):
    """A parametric L(N, D): its public parameters and the log-space parametrisation it is fitted in."""

    name: str
    formula: str
    params: tuple[str, ...]         # public names, in theta order
    log_params: tuple[bool, ...]    # theta[k] = log(param) where True
    kernel: Callable[..., float]
    grid: tuple[tuple[float, ...], ...]  # initialisation grid per theta component
    bounds: tuple[tuple[float | None, float | None], ...]

    def to_theta(self, params: dict[str, float]) -> np.ndarray:
        return np.array([math.log(params[p]) if lg else float(params[p])
                         for p, lg in zip(self.params, self.log_params)])

    def from_theta(self, theta: np.ndarray) -> dict[str, float]:
        return dict(zip(self.params, map(float, self.from_theta_array(theta))))

    def from_theta_array(self, thetas: np.ndarray) -> np.ndarray:
        """Rows of theta -> rows of public parameters; a diverged log-parameter becomes inf."""
        out = np.array(thetas, dtype=float, copy=True)
        with np.errstate(over="ignore"):
            for k, lg in enumerate(self.log_params):
                if lg:
                    out[..., k] = np.exp(out[..., k])
        return out

    def init_grid(self) -> np.ndarray:
        """Every combination of the per-component grid values: (n_points, n_params)."""
        return np.array(list(itertools.product(*self.grid)), dtype=float)

    def objective(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray,
                  w: np.ndarray, delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
        grad = np.empty(len(self.params))
        f = self.kernel(np.ascontiguousarray(theta, dtype=np.float64), x, y, t, w, delta, grad)
        return f, grad

    def objective_grid(self, thetas: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray,
                       w: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
        """The objective at many points at once (for screening the initialisation grid)."""
        pred = np.log(self.predict_array(np.exp(x), np.exp(y), self.from_theta_array(thetas)))
        r = np.abs(t[None, :] - pred)
        return (w[None, :] * np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))).sum(axis=1)

    def predict(self, N: np.ndarray | float, D: np.ndarray | float, params: dict[str, float]) -> np.ndarray:
        """Loss at N parameters trained on D tokens."""
        row = np.array([[params[p] for p in self.params]])
        N, D = np.broadcast_arrays(np.asarray(N, float), np.asarray(D, float))
        return self.predict_array(N.ravel(), D.ravel(), row)[0].reshape(N.shape)

    @abstractmethod
    def predict_array(self, N: np.ndarray, D: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Loss for each parameter row (rows: (k, n_params)) at every (N, D): (k, len(N))."""

    @abstractmethod
    def compute_optimal(self, C: np.ndarray | float, params: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """(N*, D*) minimising the loss subject to 6 N D = C."""


class ChinchillaLaw(Law):
    """Hoffmann et al. (2022) approach 3: L = E + A / N^alpha + B / D^beta."""

    def predict_array(self, N: np.ndarray, D: np.ndarray, rows: np.ndarray) -> np.ndarray:
        E, A, B, alpha, beta = (rows[:, k:k + 1] for k in range(5))
        return E + A / np.power(N, alpha) + B / np.power(D, beta)

    def compute_optimal(self, C, params):
        # Hoffmann et al. eq. (4): N* = G (C/6)^(beta/(alpha+beta)), D* = G^-1 (C/6)^(alpha/(alpha+beta))
        # numpy powers: a non-physical parameter set (say a bootstrap refit with beta < 0)
        # gives NaN here, not a complex number
        E, A, B, alpha, beta = (np.float64(params[p]) for p in self.params)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            G = np.power(alpha * A / (beta * B), 1.0 / (alpha + beta))
            c6 = np.asarray(C, float) / 6.0
            return G * np.power(c6, beta / (alpha + beta)), np.power(c6, alpha / (alpha + beta)) / G


class KaplanLaw(Law):
    """Kaplan et al. (2020) eq. (1.5): L = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D."""

    def predict_array(self, N: np.ndarray, D: np.ndarray, rows: np.ndarray) -> np.ndarray:
        Nc, Dc, aN, aD = (rows[:, k:k + 1] for k in range(4))
        # in log space: the constants reach 1e13 and the powers overflow otherwise
        u1 = (aN / aD) * (np.log(Nc) - np.log(N))
        u2 = np.log(Dc) - np.log(D)
        return np.exp(aD * np.logaddexp(u1, u2))

    def compute_optimal(self, C, params):
        # minimise (N_c/N)^r + 6 D_c N / C over N: N^(r+1) = r N_c^r C / (6 D_c)
        Nc, Dc, aN, aD = (np.float64(params[p]) for p in self.params)
        r = aN / aD
        C = np.asarray(C, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            logN = (np.log(r) + r * np.log(Nc) + np.log(C) - np.log(6.0 * Dc)) / (r + 1.0)
        N = np.exp(logN)
        return N, C / (6.0 * N)


CHINCHILLA = ChinchillaLaw(
    name="chinchilla",
    formula="L = E + A / N^alpha + B / D^beta",
    params=("E", "A", "B", "alpha", "beta"),
    log_params=(True, True, True, False, False),
    kernel=_chinchilla_objective,
    # Hoffmann et al.'s grid as Besiroglu et al. use it (e, a, b, alpha, beta):
    # 5 x 6 x 6 x 5 x 5 = 4500 points
    grid=(tuple(np.arange(-1, 1.5, 0.5)), tuple(np.arange(0, 30, 5.0)), tuple(np.arange(0, 30, 5.0)),
          tuple(np.arange(0, 2.5, 0.5)), tuple(np.arange(0, 2.5, 0.5))),
    bounds=((None, None),) * 5,
)

KAPLAN = KaplanLaw(
    name="kaplan",
    formula="L = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D",
    params=("N_c", "D_c", "alpha_N", "alpha_D"),
    log_params=(True, True, False, False),
    kernel=_kaplan_objective,
    grid=(tuple(np.log(10.0 ** np.arange(8, 20, 2))), tuple(np.log(10.0 ** np.arange(8, 20, 2))),
          (0.05, 0.1, 0.2, 0.4), (0.05, 0.1, 0.2, 0.4)),
    # alpha_D divides: keep both exponents positive
    bounds=((None, None), (None, None), (1e-4, 5.0), (1e-4, 5.0)),
)

LAWS: dict[str, Law] = {law.name: law for law in (CHINCHILLA, KAPLAN)}
