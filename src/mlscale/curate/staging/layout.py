"""Where each intermediate file lives under OUT/.work, and the checks made before use.

Every intermediate file belongs to one work unit. A file that is missing, of the wrong
shape or type, or out of order is named in an error that says which marker to delete so
that the unit is redone (all units are deterministic, so redoing one is always safe).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlscale.artifacts import DONE_DIR, atomic_path
from mlscale.errors import ArtifactError

WORK = ".work"


@dataclass(frozen=True)
class Layout:
    """Paths of one curate output directory."""

    out: Path

    @property
    def work(self) -> Path:
        return self.out / WORK

    # stage 1: filter
    def docs(self, shard: int) -> Path:
        return self.work / "docs" / f"shard-{shard:05d}.parquet"

    def order(self, shard: int) -> Path:
        return self.work / "docs" / f"order-{shard:05d}.npy"

    def filter_removed(self, shard: int) -> Path:
        return self.work / "removed" / f"shard-{shard:05d}.parquet"

    # exact
    def exact_keys(self, shard: int) -> Path:
        return self.work / "exact" / f"keys-{shard:05d}.npy"

    def exact_dups(self, part: int) -> Path:
        return self.work / "exact" / f"dups-{part:03d}.parquet"

    # near
    def near_gids(self, shard: int) -> Path:
        return self.work / "near" / f"gids-{shard:05d}.npy"

    def near_signatures(self, shard: int) -> Path:
        return self.work / "near" / f"signatures-{shard:05d}.npy"

    def near_bands(self, shard: int) -> Path:
        return self.work / "near" / f"bands-{shard:05d}.npy"

    def near_pairs(self, band: int, part: int) -> Path:
        return self.work / "near" / f"pairs-b{band:02d}-p{part:03d}.npy"

    def near_dups(self) -> Path:
        return self.work / "near" / "dups.parquet"

    # final outputs
    def kept(self, shard: int) -> Path:
        return self.out / "kept" / f"part-{shard:05d}.parquet"

    def removed(self, shard: int) -> Path:
        return self.out / "removed" / f"part-{shard:05d}.parquet"

    def report(self) -> Path:
        return self.out / "report.html"

    def marker(self, unit: str) -> Path:
        return self.out / DONE_DIR / unit

    def redo(self, unit: str) -> str:
        """The instruction that ends every stale-file error."""
        return f"delete {self.marker(unit)} and rerun the same command to redo that unit"


def save_npy(path: Path, array: np.ndarray) -> None:
    """Save an array atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path, redo: str, *, dtype: np.dtype | type, shape: tuple[int | None, ...],
             mmap: bool = True) -> np.ndarray:
    """Open an intermediate array (memory-mapped by default), checking dtype and shape.

    A `None` in `shape` accepts any length on that axis.
    """
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; {redo}")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ArtifactError(f"{path} is corrupt ({e}); {redo}") from None
    ok = arr.dtype == np.dtype(dtype) and arr.ndim == len(shape) and all(
        want is None or want == got for want, got in zip(shape, arr.shape))
    if not ok:
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        raise ArtifactError(f"{path} is stale: it holds a {arr.dtype} array of shape "
                            f"{arr.shape}, expected {np.dtype(dtype)} {want}; {redo}")
    return arr


def check_sorted(path: Path, values: np.ndarray, redo: str, strict: bool = True) -> None:
    """Fail naming `path` unless `values` (1-d) is in increasing order."""
    if values.shape[0] < 2:
        return
    # compare, not subtract: a difference of unsigned keys would wrap around
    bad = np.flatnonzero(values[1:] <= values[:-1] if strict else values[1:] < values[:-1])
    if bad.size:
        raise ArtifactError(f"{path} is corrupt: not sorted at row {int(bad[0]) + 1}; {redo}")
