"""The plan of a curate run: its work units and what every task is handed.

The filter stage's units: a file larger than `shard.input_bytes` is cut into
ceil(size / input_bytes) slices (slice k of n takes the records whose index i in the file
has i % n == k), and consecutive smaller files are packed together up to
`shard.pack_bytes` (a folder of thousands of .html pages makes a few units, not
thousands). The units, their order and hence the shard numbers depend only on the input
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
class Piece:
    """One input file, or one slice of its records."""

    path: str
    source: str
    file_index: int
    slice: int = 0
    slices: int = 1


@dataclass(frozen=True)
class FilterUnit:
    """Read, extract, language and quality for its pieces, in order, into one shard."""

    shard: int
    pieces: tuple[Piece, ...]

    @property
    def name(self) -> str:
        return f"filter-{self.shard:05d}"


def source_names(files: Sequence[Path]) -> list[str]:
    """Each file's path relative to the inputs' common folder: ids stay machine-independent."""
    parents = [str(Path(f).resolve().parent) for f in files]
    root = Path(os.path.commonpath(parents)) if parents else Path(".")
    return [Path(f).resolve().relative_to(root).as_posix() for f in files]


def plan_filter_units(files: Sequence[Path], input_bytes: int,
                      pack_bytes: int | None = None) -> list[FilterUnit]:
    """Slices of files over `input_bytes`, packs of up to `pack_bytes` (default:
    `input_bytes`) of smaller files."""
    pack_limit = input_bytes if pack_bytes is None else pack_bytes
    units: list[FilterUnit] = []
    pack: list[Piece] = []
    packed = 0

    def flush() -> None:
        nonlocal pack, packed
        if pack:
            units.append(FilterUnit(len(units), tuple(pack)))
        pack, packed = [], 0

    for index, (path, source) in enumerate(zip(files, source_names(files))):
        size = Path(path).stat().st_size
        resolved = str(Path(path).resolve())
        if size > input_bytes:
            flush()
            n = math.ceil(size / input_bytes)
            for k in range(n):
                units.append(FilterUnit(len(units), (Piece(resolved, source, index, k, n),)))
            continue
        if pack and packed + size > pack_limit:
            flush()
        pack.append(Piece(resolved, source, index))
        packed += size
    flush()
    return units


POSITION_BITS = 40  # records per file: up to 2^40


def input_order(file_index: int, position: int) -> int:
    """The input-order key of the record at `position` (0-based) of file `file_index`."""
    return (file_index << POSITION_BITS) + position


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
