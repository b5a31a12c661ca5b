"""Reading the filter stage's shards back: document ids by global index, exact duplicates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlscale.curate.output import read_table
from mlscale.curate.staging.layout import check_sorted, load_npy
from mlscale.curate.staging.plan import Context


def shard_table(ctx: Context, shard: int, columns: list[str] | None = None) -> pa.Table:
    """Shard `shard`'s surviving documents, checked against the recorded count."""
    layout = ctx.layout
    return read_table(layout.docs(shard), columns, expect_rows=ctx.docs[shard],
                      redo=layout.redo(f"filter-{shard:05d}"))


def shard_order(ctx: Context, shard: int) -> np.ndarray:
    """Input-order keys of shard `shard`'s documents (increasing within a shard)."""
    layout = ctx.layout
    path, redo = layout.order(shard), layout.redo(f"filter-{shard:05d}")
    order = load_npy(path, redo, dtype=np.int64, shape=(ctx.docs[shard],), mmap=False)
    check_sorted(path, order, redo)
    return order


def document_ids(ctx: Context, gids: np.ndarray) -> list[str]:
    """The ids of documents by global index, reading each shard's id column once."""
    gids = np.asarray(gids, dtype=np.int64)
    out: list[str] = [""] * len(gids)
    if not len(gids):
        return out
    shards = ctx.shard_of(gids)
    for shard in np.unique(shards):
        ids = shard_table(ctx, int(shard), ["id"]).column("id")
        where = np.flatnonzero(shards == shard)
        rows = gids[where] - ctx.offsets[int(shard)]
        taken = ids.take(pa.array(rows)).to_pylist()
        for i, value in zip(where.tolist(), taken):
            out[i] = value
    return out


def duplicates_in_shard(ctx: Context, paths: list[Path], shard: int, redo: str) -> pa.Table:
    """Rows of duplicate tables (gid, duplicate_of, cluster_id, ...) that fall in `shard`.

    Each table is sorted by gid, so the row-group statistics let the reader skip the
    groups of other shards; the merged rows come back sorted by gid.
    """
    lo = ctx.offsets[shard]
    hi = lo + ctx.docs[shard]
    tables = []
    for path in paths:
        table = read_table(path, redo=redo, filters=[("gid", ">=", lo), ("gid", "<", hi)])
        check_sorted(path, table.column("gid").to_numpy(), redo)
        tables.append(table)
    if not tables:
        return pa.table({"gid": pa.array([], pa.int64())})
    merged = pa.concat_tables(tables)
    return merged.take(pc.sort_indices(merged, sort_keys=[("gid", "ascending")]))
