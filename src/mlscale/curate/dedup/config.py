"""Configs of exact and near-duplicate detection, and the choice of LSH bands and rows.

Bands and rows rule (`NearConfig.band_rows()`):
* both set: used as given (bands * rows must not exceed num_perm);
* one set, the other 0: the other is num_perm // the one set;
* both 0 (the default), "derive": FineWeb's published 14 x 8 when num_perm and threshold
  are at their defaults (112, 0.8); otherwise the (bands, rows) with bands * rows <=
  num_perm that minimise the false-positive plus false-negative areas under the LSH
  S-curve P(s) = 1 - (1 - s^rows)^bands around the threshold (datasketch's
  `_optimal_param` with equal weights).

Why 14 x 8 and not the optimum (9 x 12) for the defaults: the S-curve of 14 x 8 turns
at (1/14)^(1/8) = 0.72 and catches a pair at s = 0.8 with probability 0.92, where 9 x 12
catches it with 0.47; with verification on, extra candidates cost only a comparison,
missed ones cost recall.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from mlscale.config import option
from mlscale.errors import ConfigError

DEFAULT_NUM_PERM = 112
DEFAULT_THRESHOLD = 0.8
FINEWEB_BANDS_ROWS = (14, 8)


@dataclass
class NearConfig:
    """Near-duplicate detection: MinHash signatures, LSH buckets, verification, clusters."""

    num_perm: int = option(DEFAULT_NUM_PERM, "MinHash permutations (signature length)",
                           min=1, max=4096)
    bands: int = option(0, "LSH bands; 0 = derive (14 with the default threshold and "
                        "num_perm)", min=0)
    rows: int = option(0, "rows (signature entries) per band; 0 = derive (8 by default)",
                       min=0)
    threshold: float = option(DEFAULT_THRESHOLD, "Jaccard similarity at which two documents "
                              "are near duplicates", min=0.01, max=1.0)
    ngram: int = option(5, "words per shingle", min=1, max=64)
    verify: bool = option(True, "keep a candidate pair only if its signature-estimated "
                          "Jaccard >= threshold (false: FineWeb's behaviour)")
    seed: int = option(1, "seed of the permutation coefficients", min=0)
    max_bucket: int = option(64, "LSH buckets up to this size are paired all-to-all; in "
                             "larger ones each member is paired with its next max_bucket-1 "
                             "members (by document order)", min=2)

    def validate(self) -> None:
        """Fail on impossible band/row settings, naming the key."""
        self.band_rows()

    def band_rows(self) -> tuple[int, int]:
        """The (bands, rows) in use, resolving 0 by the rule in the module docstring."""
        b, r = self.bands, self.rows
        if b and r:
            if b * r > self.num_perm:
                raise ConfigError(f"near.bands * near.rows = {b} * {r} = {b * r} exceeds "
                                  f"near.num_perm = {self.num_perm}; lower one of them")
            return b, r
        if b:
            if b > self.num_perm:
                raise ConfigError(f"near.bands = {b} exceeds near.num_perm = {self.num_perm}")
            return b, self.num_perm // b
        if r:
            if r > self.num_perm:
                raise ConfigError(f"near.rows = {r} exceeds near.num_perm = {self.num_perm}")
            return self.num_perm // r, r
        if self.num_perm == DEFAULT_NUM_PERM and self.threshold == DEFAULT_THRESHOLD:
            return FINEWEB_BANDS_ROWS
        return optimal_band_rows(self.threshold, self.num_perm)


@dataclass
class ExactConfig:
    """Exact duplicates: documents with the same 128-bit hash are one cluster."""

    normalize: bool = option(True, "hash the normal form (case, punctuation, digits, "
                             "whitespace folded); false hashes the raw text")


def lsh_probability(s: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """Probability that LSH with `bands` x `rows` makes a pair of Jaccard `s` a candidate."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def _integral(f_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.trapezoid(f_values, x, axis=-1) if hasattr(np, "trapezoid") else \
        np.trapz(f_values, x, axis=-1)


@functools.lru_cache(maxsize=256)
def optimal_band_rows(threshold: float, num_perm: int, fp_weight: float = 0.5,
                      fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising weighted false-positive + false-negative S-curve areas.

    False positives: the area under P(s) for s < threshold; false negatives: the area
    above it for s > threshold. Ties go to fewer bands, then fewer rows (as datasketch).
    """
    grid = 2001
    lo = np.linspace(0.0, threshold, grid)
    hi = np.linspace(threshold, 1.0, grid)
    shape = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    b = np.array([x[0] for x in shape], dtype=np.float64)[:, None]
    r = np.array([x[1] for x in shape], dtype=np.float64)[:, None]
    fp = _integral(lsh_probability(lo[None, :], b, r), lo)
    fn = _integral(1.0 - lsh_probability(hi[None, :], b, r), hi)
    return shape[int(np.argmin(fp_weight * fp + fn_weight * fn))]  # first minimum wins
