"""The final stage: per shard, drop the duplicates and write OUT/kept and OUT/removed.

A shard's removed part holds, in this order, the removals of its filter stage (in input
order), then its exact duplicates and its near duplicates (by document order). A part
that would be empty is not written.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlscale.curate.output import REMOVED_SCHEMA, read_table, write_table
from mlscale.curate.staging.lookup import duplicates_in_shard, shard_table
from mlscale.curate.staging.plan import Context
from mlscale.curate.staging.stats import LENGTH_EDGES, example, histogram
from mlscale.errors import ArtifactError

EXACT_REASON = "duplicate"
NEAR_REASON = "near_duplicate"


def dedup_sources(ctx: Context) -> list[tuple[str, str, list, str]]:
    """(step, reason, duplicate tables, unit to redo) of the dedup steps this run has."""
    layout = ctx.layout
    out = []
    if "exact" in ctx.config.steps:
        out.append(("exact", EXACT_REASON, [layout.exact_dups(p) for p in range(ctx.parts)],
                    "exact-dups-*"))
    if "near" in ctx.config.steps:
        out.append(("near", NEAR_REASON, [layout.near_dups()], "near-clusters"))
    return out


def run_final_unit(ctx: Context, shard: int) -> dict[str, Any]:
    """Write shard `shard`'s kept and removed parts; report its counts and examples."""
    layout = ctx.layout
    docs = shard_table(ctx, shard)
    n = docs.num_rows
    offset = ctx.offsets[shard]
    drop = np.zeros(n, dtype=bool)
    removed = [read_table(layout.filter_removed(shard), redo=layout.redo(f"filter-{shard:05d}"))
               .cast(REMOVED_SCHEMA)]
    steps: list[dict[str, Any]] = []
    examples: dict[str, dict[str, Any]] = {}
    for step, reason, paths, unit in dedup_sources(ctx):
        redo = layout.redo(unit)
        dups = duplicates_in_shard(ctx, paths, shard, redo)
        rows = dups.column("gid").to_numpy().astype(np.int64) - offset
        if rows.size and (rows.min() < 0 or rows.max() >= n or drop[rows].any()
                          or np.unique(rows).size != rows.size):
            raise ArtifactError(f"the {step} duplicate tables {', '.join(map(str, paths))} do not "
                                f"match shard {shard} (stale rows); {redo}")
        docs_in = int(n - drop.sum())
        drop[rows] = True
        steps.append({"name": step, "group": step, "in": docs_in, "out": docs_in - int(rows.size),
                      "removed": {reason: int(rows.size)} if rows.size else {}, "seconds": 0.0})
        if not rows.size:
            continue
        taken = docs.take(pa.array(rows))
        detail = dups.column("detail") if "detail" in dups.column_names else \
            pa.array([""] * rows.size, pa.string())
        removed.append(pa.table({
            "id": taken.column("id"), "step": pa.array([step] * rows.size, pa.string()),
            "reason": pa.array([reason] * rows.size, pa.string()), "detail": detail,
            "duplicate_of": dups.column("duplicate_of"), "cluster_id": dups.column("cluster_id"),
            "source": taken.column("source"), "url": taken.column("url"),
        }, schema=REMOVED_SCHEMA))
        first = 0
        examples[f"{step}/{reason}"] = example(
            taken.column("id")[first].as_py(), step, reason,
            text=taken.column("text")[first].as_py(), detail=detail[first].as_py(),
            url=taken.column("url")[first].as_py(), source=taken.column("source")[first].as_py(),
            duplicate_of=dups.column("duplicate_of")[first].as_py(),
            duplicate_gid=int(dups.column("duplicate_gid")[first].as_py()),
            cluster_id=dups.column("cluster_id")[first].as_py())
    kept = docs.filter(pa.array(~drop))
    removed_table = pa.concat_tables(removed)
    if kept.num_rows:
        write_table(kept, layout.kept(shard))
    if removed_table.num_rows:
        write_table(removed_table, layout.removed(shard))
    lengths = pc.utf8_length(kept.column("text")).to_numpy() if kept.num_rows else []
    return {"kept": kept.num_rows, "removed": removed_table.num_rows,
            "kept_chars": int(np.sum(lengths)) if kept.num_rows else 0,
            "steps": steps, "examples": examples,
            "hist": {"length_kept": histogram(lengths, LENGTH_EDGES)}}
