"""The plan of a curate run: its work units and what every task is handed.

The filter stage has one unit per input file, or per slice of a file larger than
`shard.input_bytes`: slice k of n takes the records whose index i in the file has
i % n == k. The units, their order and hence the shard numbers depend only on the input
files and the config, never on the executor or the worker count.

Two numbers name a document after the filter stage: its global index g = offset[s] + row
(where it is stored), and its input order (file index << 40 | record index in the file),
which decides every choice between documents: the first of a group of duplicates in
input order survives, however the files were sliced into shards.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mlscale.curate.config import CurateConfig
from mlscale.curate.staging.layout import Layout


@dataclass(frozen=True)
class FilterUnit:
    """Read, extract, language and quality for one slice of one input file."""

    shard: int
    path: str
    source: str
    file_index: int = 0
    slice: int = 0
    slices: int = 1

    @property
    def name(self) -> str:
        return f"filter-{self.shard:05d}"


def source_names(files: Sequence[Path]) -> list[str]:
    """Each file's path relative to the inputs' common folder: ids stay machine-independent."""
    parents = [str(Path(f).resolve().parent) for f in files]
    root = Path(os.path.commonpath(parents)) if parents else Path(".")
    return [Path(f).resolve().relative_to(root).as_posix() for f in files]


def plan_filter_units(files: Sequence[Path], input_bytes: int) -> list[FilterUnit]:
    """One unit per file, or ceil(size / input_bytes) record slices of a large file."""
    units: list[FilterUnit] = []
    for index, (path, source) in enumerate(zip(files, source_names(files))):
        size = Path(path).stat().st_size
        n = max(1, math.ceil(size / input_bytes))
        for k in range(n):
            units.append(FilterUnit(len(units), str(Path(path).resolve()), source, index, k, n))
    return units


POSITION_BITS = 40  # records per file: up to 2^40


def input_order(file_index: int, positions: np.ndarray) -> np.ndarray:
    """Input-order keys of records at `positions` (0-based) of file `file_index`."""
    return (np.int64(file_index) << np.int64(POSITION_BITS)) + np.asarray(positions, dtype=np.int64)


def key_partitions(total_docs: int, dedup_docs: int) -> int:
    """How many key partitions keep every bucketing task within `dedup_docs` keys."""
    return max(1, math.ceil(total_docs / dedup_docs))


@dataclass(frozen=True)
class Context:
    """What every task of a run is handed (small and picklable: sent to each worker)."""

    out: str
    config: CurateConfig
    # documents per shard after the filter stage; shard s holds global indices
    # offsets[s] .. offsets[s] + docs[s] - 1
    docs: tuple[int, ...] = ()
    parts: int = 1
    offsets: tuple[int, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", tuple(int(x) for x in np.cumsum((0,) + self.docs)[:-1]))

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.out))

    @property
    def total_docs(self) -> int:
        return int(sum(self.docs))

    def shard_of(self, gids: np.ndarray) -> np.ndarray:
        """The shard holding each global document index."""
        return np.searchsorted(np.asarray(self.offsets, dtype=np.int64), gids, side="right") - 1
