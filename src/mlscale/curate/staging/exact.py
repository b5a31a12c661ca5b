"""Exact deduplication staged on disk: keys per shard, then duplicate groups per partition.

    exact-keys-SSSSS   the shard's (n, 2) uint64 XXH3-128 keys of normalised text
    exact-dups-PPP     every key whose high half is = P (mod parts): group equal keys over
                       all shards; all but the first document of a group in input order
                       are duplicates. Writes gid, duplicate_of (the first's id),
                       duplicate_gid, cluster_id ("exact-" + the key in hex), cluster_size,
                       sorted by gid.

A partition task holds only its share of the keys (16 bytes and a gid per document), so
memory is bounded by `shard.dedup_docs`, not by the corpus.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mlscale.curate.dedup.exact import exact_keys
from mlscale.curate.output import write_table
from mlscale.curate.staging.layout import load_npy, save_npy
from mlscale.curate.staging.lookup import document_ids, shard_order, shard_table
from mlscale.curate.staging.plan import Context

DUPS_SCHEMA = pa.schema([
    pa.field("gid", pa.int64(), nullable=False),
    pa.field("duplicate_of", pa.string(), nullable=False),
    pa.field("duplicate_gid", pa.int64(), nullable=False),
    pa.field("cluster_id", pa.string(), nullable=False),
    pa.field("cluster_size", pa.int64(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
])


def run_exact_keys(ctx: Context, shard: int) -> dict[str, Any]:
    """Hash the normal form of each of the shard's documents."""
    texts = shard_table(ctx, shard, ["text"]).column("text").to_pylist()
    keys = exact_keys(texts, normalize=ctx.config.exact.normalize)
    save_npy(ctx.layout.exact_keys(shard), keys.astype(np.uint64, copy=False))
    return {"docs": len(texts)}


def run_exact_dups(ctx: Context, part: int) -> dict[str, Any]:
    """Find the duplicate groups among the keys of partition `part` (see module docstring)."""
    layout = ctx.layout
    keys_parts, gid_parts, order_parts = [], [], []
    for shard, n in enumerate(ctx.docs):
        keys = load_npy(layout.exact_keys(shard), layout.redo(f"exact-keys-{shard:05d}"),
                        dtype=np.uint64, shape=(n, 2))
        rows = np.flatnonzero(keys[:, 0] % np.uint64(ctx.parts) == np.uint64(part))
        keys_parts.append(np.asarray(keys[rows]))
        gid_parts.append(rows.astype(np.int64) + ctx.offsets[shard])
        order_parts.append(shard_order(ctx, shard)[rows])
    keys = np.concatenate(keys_parts) if keys_parts else np.empty((0, 2), np.uint64)
    gids = np.concatenate(gid_parts) if gid_parts else np.empty(0, np.int64)
    input_order = np.concatenate(order_parts) if order_parts else np.empty(0, np.int64)
    # equal keys together, each group in input order: its first member survives
    order = np.lexsort((input_order, keys[:, 1], keys[:, 0]))
    keys, gids = keys[order], gids[order]
    starts = np.ones(len(gids), dtype=bool)
    starts[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    group = np.cumsum(starts) - 1
    first_gid = gids[starts][group]
    sizes = np.bincount(group)[group] if len(gids) else np.empty(0, np.int64)
    dup = ~starts
    table = _dups_table(ctx, gids[dup], first_gid[dup], keys[dup], sizes[dup])
    write_table(table, layout.exact_dups(part))
    group_sizes = np.bincount(group)
    sizes_hist = np.bincount(group_sizes[group_sizes >= 2]) if len(group_sizes) else []
    return {"removed": table.num_rows, "clusters": int(np.sum(group_sizes >= 2)),
            "cluster_sizes": {str(s): int(c) for s, c in enumerate(sizes_hist) if c}}


def _dups_table(ctx: Context, gids: np.ndarray, survivors: np.ndarray, keys: np.ndarray,
                sizes: np.ndarray) -> pa.Table:
    order = np.argsort(gids, kind="stable")
    gids, survivors, keys, sizes = gids[order], survivors[order], keys[order], sizes[order]
    return pa.table({
        "gid": pa.array(gids, pa.int64()),
        "duplicate_of": pa.array(document_ids(ctx, survivors), pa.string()),
        "duplicate_gid": pa.array(survivors, pa.int64()),
        "cluster_id": pa.array([f"exact-{int(hi):016x}{int(lo):016x}" for hi, lo in keys.tolist()],
                               pa.string()),
        "cluster_size": pa.array(sizes, pa.int64()),
        "detail": pa.array([f"{n} documents with this normalised text" for n in sizes.tolist()],
                           pa.string()),
    }, schema=DUPS_SCHEMA)
