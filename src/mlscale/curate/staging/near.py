"""Near-duplicate detection (MinHash LSH) staged on disk, each stage a set of tasks.

    near-signatures-SSSSS   MinHash signatures (m, num_perm) and LSH band keys (m, bands)
                            of the shard's documents that survived exact dedup, with
                            their global indices (m,), sorted
    near-band-BB-PPP        band BB's keys that are = PPP (mod parts), from every shard
                            (memory-mapped, one column at a time): documents sharing a key
                            are candidate pairs (`bucket_pairs`); with `near.verify` a pair
                            is kept only if its signature-estimated Jaccard >= threshold
    near-clusters           the pairs of all bands: connected components (union-find),
                            the first of each cluster in input order survives; writes gid,
                            duplicate_of, duplicate_gid, cluster_id, cluster_size, detail
                            (the removed document's estimated Jaccard with its survivor)

Only the signatures of the documents in a candidate pair are read back, through memory
maps, in blocks; no task holds the corpus's signatures.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mlscale.curate.dedup import verify_pairs
from mlscale.curate.dedup.clusters import choose_survivors, connected_components
from mlscale.curate.dedup.lsh import band_keys, bucket_pairs, estimated_jaccard
from mlscale.curate.dedup.minhash import minhash_signatures
from mlscale.curate.output import write_table
from mlscale.curate.staging.exact import DUPS_SCHEMA
from mlscale.curate.staging.layout import check_sorted, load_npy, save_npy
from mlscale.curate.staging.lookup import (document_ids, duplicates_in_shard, shard_order,
                                           shard_table)
from mlscale.curate.staging.plan import Context
from mlscale.errors import ArtifactError

PAIR_BLOCK = 1 << 16  # candidate pairs verified per block (2 x 64k signatures in memory)


def signatures_unit(shard: int) -> str:
    return f"near-signatures-{shard:05d}"


def band_unit(band: int, part: int) -> str:
    return f"near-band-{band:02d}-{part:03d}"


def run_near_signatures(ctx: Context, shard: int) -> dict[str, Any]:
    """Signatures and band keys of the shard's documents left after exact dedup."""
    layout = ctx.layout
    cfg = ctx.config.near
    bands, rows = cfg.band_rows()
    texts = shard_table(ctx, shard, ["text"]).column("text")
    alive = np.ones(len(texts), dtype=bool)
    if "exact" in ctx.config.steps:
        dups = duplicates_in_shard(ctx, [layout.exact_dups(p) for p in range(ctx.parts)], shard,
                                   layout.redo("exact-dups-*"))
        alive[dups.column("gid").to_numpy() - ctx.offsets[shard]] = False
    keep = np.flatnonzero(alive)
    sigs = minhash_signatures(texts.take(pa.array(keep)).to_pylist(), cfg)
    save_npy(layout.near_signatures(shard), sigs.astype(np.uint64, copy=False))
    save_npy(layout.near_bands(shard), band_keys(sigs, bands, rows))
    # the gids last: a file set is only trusted once all three agree in length
    save_npy(layout.near_gids(shard), keep.astype(np.int64) + ctx.offsets[shard])
    return {"docs": int(keep.size)}


class SignatureStore:
    """Signatures by global document index, read through each shard's memory maps."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.num_perm = ctx.config.near.num_perm
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def gids(self, shard: int) -> np.ndarray:
        return self._arrays(shard)[0]

    def _arrays(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._open:
            layout = self.ctx.layout
            redo = layout.redo(signatures_unit(shard))
            path = layout.near_gids(shard)
            gids = load_npy(path, redo, dtype=np.int64, shape=(None,))
            check_sorted(path, gids, redo)
            lo, hi = self.ctx.offsets[shard], self.ctx.offsets[shard] + self.ctx.docs[shard]
            if gids.size and (gids[0] < lo or gids[-1] >= hi):
                raise ArtifactError(f"{path} is stale: its documents are not those of shard "
                                    f"{shard}; {redo}")
            sigs = load_npy(layout.near_signatures(shard), redo, dtype=np.uint64,
                            shape=(gids.size, self.num_perm))
            self._open[shard] = (gids, sigs)
        return self._open[shard]

    def fetch(self, gids: np.ndarray) -> np.ndarray:
        """(k, num_perm) signatures of documents `gids` (each must have one)."""
        gids = np.asarray(gids, dtype=np.int64)
        out = np.empty((gids.size, self.num_perm), dtype=np.uint64)
        shards = self.ctx.shard_of(gids)
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            have, sigs = self._arrays(int(shard))
            rows = np.searchsorted(have, gids[where])
            if np.any(rows >= have.size) or np.any(have[np.minimum(rows, have.size - 1)] != gids[where]):
                raise ArtifactError(f"a candidate pair names a document without a signature in "
                                    f"{self.ctx.layout.near_gids(int(shard))}; "
                                    f"{self.ctx.layout.redo('near-band-*')}")
            order = np.argsort(rows, kind="stable")  # read the memory map front to back
            out[where[order]] = sigs[rows[order]]
        return out

    def similarity(self, pairs: np.ndarray) -> np.ndarray:
        """Signature-estimated Jaccard of each pair, in blocks."""
        out = np.empty(pairs.shape[0], dtype=np.float64)
        for start in range(0, pairs.shape[0], PAIR_BLOCK):
            block = pairs[start:start + PAIR_BLOCK]
            out[start:start + len(block)] = estimated_jaccard(self.fetch(block[:, 0]),
                                                              self.fetch(block[:, 1]))
        return out

    def verified(self, pairs: np.ndarray, threshold: float) -> np.ndarray:
        """Mask of the pairs whose estimated Jaccard reaches `threshold`, by the same rule
        (counts of equal entries, no float rounding) as the in-memory `near_duplicates`."""
        keep = np.empty(pairs.shape[0], dtype=bool)
        for start in range(0, pairs.shape[0], PAIR_BLOCK):
            block = pairs[start:start + PAIR_BLOCK]
            k = len(block)
            sigs = np.concatenate([self.fetch(block[:, 0]), self.fetch(block[:, 1])])
            local = np.stack([np.arange(k), np.arange(k, 2 * k)], axis=1)
            keep[start:start + k] = verify_pairs(local, sigs, threshold, return_mask=True)
        return keep


def run_near_band(ctx: Context, task: tuple[int, int]) -> dict[str, Any]:
    """Candidate pairs of one band (and key partition), verified if `near.verify`."""
    band, part = task
    layout = ctx.layout
    cfg = ctx.config.near
    bands, _rows = cfg.band_rows()
    store = SignatureStore(ctx)
    key_parts, gid_parts, order_parts = [], [], []
    for shard in range(len(ctx.docs)):
        gids = np.asarray(store.gids(shard))
        keys = load_npy(layout.near_bands(shard), layout.redo(signatures_unit(shard)),
                        dtype=np.uint64, shape=(gids.size, bands))
        column = np.asarray(keys[:, band])
        if ctx.parts > 1:
            sel = column % np.uint64(ctx.parts) == np.uint64(part)
            column, gids = column[sel], gids[sel]
        key_parts.append(column)
        gid_parts.append(gids)
        order_parts.append(shard_order(ctx, shard)[gids - ctx.offsets[shard]])
    keys = np.concatenate(key_parts) if key_parts else np.empty(0, np.uint64)
    gids = np.concatenate(gid_parts) if gid_parts else np.empty(0, np.int64)
    input_order = np.concatenate(order_parts) if order_parts else np.empty(0, np.int64)
    # pair bucket members by input order (as an in-memory run over the inputs would),
    # then name them by global index again
    by_order = np.argsort(input_order)
    pairs = bucket_pairs(keys, input_order, cfg.max_bucket)
    pairs = np.sort(gids[by_order[np.searchsorted(input_order, pairs, sorter=by_order)]], axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if pairs.size else pairs.reshape(0, 2)
    candidates = int(pairs.shape[0])
    if cfg.verify and candidates:
        pairs = pairs[store.verified(pairs, cfg.threshold)]
    save_npy(layout.near_pairs(band, part), pairs.astype(np.int64, copy=False))
    return {"candidates": candidates, "pairs": int(pairs.shape[0])}


def _load_pairs(ctx: Context) -> np.ndarray:
    layout = ctx.layout
    bands, _rows = ctx.config.near.band_rows()
    chunks = []
    for band in range(bands):
        for part in range(ctx.parts):
            path = layout.near_pairs(band, part)
            redo = layout.redo(band_unit(band, part))
            pairs = load_npy(path, redo, dtype=np.int64, shape=(None, 2), mmap=False)
            if pairs.size:
                if pairs.min() < 0 or pairs.max() >= ctx.total_docs or np.any(pairs[:, 0] >= pairs[:, 1]):
                    raise ArtifactError(f"{path} is stale: its pairs name documents outside this "
                                        f"run; {redo}")
                # pairs come sorted by (a, b): check on a single key
                check_sorted(path, pairs[:, 0] * ctx.total_docs + pairs[:, 1], redo)
            chunks.append(pairs)
    if not chunks:
        return np.empty((0, 2), np.int64)
    return np.unique(np.concatenate(chunks), axis=0)


def run_near_clusters(ctx: Context, _task: Any = None) -> dict[str, Any]:
    """Union-find over all verified pairs; one survivor (lowest index) per cluster."""
    n = ctx.total_docs
    pairs = _load_pairs(ctx)
    labels = connected_components(n, pairs)
    input_order = np.concatenate([shard_order(ctx, s) for s in range(len(ctx.docs))]) \
        if n else np.empty(0, np.int64)
    survivor, cluster = choose_survivors(labels, input_order)
    removed = np.flatnonzero(survivor != np.arange(n))
    sizes = np.bincount(cluster[cluster >= 0]) if np.any(cluster >= 0) else np.empty(0, np.int64)
    survivors = survivor[removed]
    similarity = SignatureStore(ctx).similarity(np.stack([removed, survivors], axis=1)) \
        if removed.size else np.empty(0)
    table = pa.table({
        "gid": pa.array(removed, pa.int64()),
        "duplicate_of": pa.array(document_ids(ctx, survivors), pa.string()),
        "duplicate_gid": pa.array(survivors, pa.int64()),
        "cluster_id": pa.array([f"near-{c}" for c in cluster[removed].tolist()], pa.string()),
        "cluster_size": pa.array(sizes[cluster[removed]] if removed.size else [], pa.int64()),
        "detail": pa.array([f"estimated Jaccard {s:.3f} with its cluster's survivor"
                            for s in similarity.tolist()], pa.string()),
    }, schema=DUPS_SCHEMA)
    write_table(table, ctx.layout.near_dups())
    size_hist = np.bincount(sizes) if sizes.size else []
    return {"pairs": int(pairs.shape[0]), "removed": int(removed.size),
            "clusters": int(sizes.size),
            "cluster_sizes": {str(s): int(c) for s, c in enumerate(size_hist) if c and s >= 2}}
