"""Exact and near duplicates among the decoded images; the survivor is deterministic.

Images are ranked by `order` (the stage ranks val before train, then input order, so the
evaluation split stays whole and train loses the copies). Exact duplicates share a hash
of their decoded pixels; near duplicates have 64-bit perceptual hashes at most `radius`
bits apart (candidates found by the pigeonhole rule: two hashes within r bits agree
exactly on at least one of r + 1 bands), verified by the stage on their pixels (pHash
alone confuses different small images: on Fashion-MNIST one in ten images has another at
radius 2). Near-duplicate pairs are joined into clusters;
every image but the best-ranked of its cluster is removed with `duplicate_of` naming it.
"""
from __future__ import annotations

import numpy as np

_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each int64/uint64 value."""
    x = np.asarray(x)
    if hasattr(np, "bitwise_count"):  # numpy >= 2: one instruction per value
        return np.bitwise_count(x.view(np.uint64))
    b = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, 8)
    return _POP[b].sum(axis=-1, dtype=np.uint8)


def exact_duplicates(xhash: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each image the index of the best-ranked image with its hash (itself if it is it)."""
    order = np.lexsort((rank, xhash))
    h = xhash[order]
    starts = np.r_[0, np.flatnonzero(h[1:] != h[:-1]) + 1]
    group_first = np.repeat(order[starts], np.diff(np.r_[starts, len(h)]))
    out = np.empty(len(xhash), dtype=np.int64)
    out[order] = group_first
    return out


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def _band_pairs(values: np.ndarray, ph: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Candidate pairs (i < j arrays) of images that agree on one band and are within radius."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    starts = np.r_[0, np.flatnonzero(v[1:] != v[:-1]) + 1]
    ends = np.r_[starts[1:], len(v)]
    pairs = []
    for a, b in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        members = order[a:b]
        for k in range(0, len(members), 2048):  # bounded memory in a very large bucket
            block = members[k:k + 2048]
            d = popcount64(ph[block][:, None] ^ ph[members][None, :])
            i, j = np.nonzero(d <= radius)
            i, j = block[i], members[j]
            keep = i < j
            pairs.append((i[keep], j[keep]))
    return pairs


def candidate_pairs(ph: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j, unique) of perceptual hashes at most `radius` bits apart."""
    if radius < 0 or len(ph) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    u = ph.view(np.uint64)
    bands = radius + 1
    width = 64 // bands
    found: list[tuple[np.ndarray, np.ndarray]] = []
    for b in range(bands):
        lo = b * width
        hi = 64 if b == bands - 1 else lo + width
        mask = np.uint64((1 << (hi - lo)) - 1)
        found += _band_pairs((u >> np.uint64(lo)) & mask, ph, radius)
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([np.concatenate([f[0] for f in found]),
                                np.concatenate([f[1] for f in found])], axis=1), axis=0)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)


def clusters(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each of n images the best-ranked image joined to it by pairs (i, j) (itself if none)."""
    parent = np.arange(n)
    for x, y in zip(i.tolist(), j.tolist()):
        rx, ry = _find(parent, x), _find(parent, y)
        if rx != ry:  # the root stays the best-ranked member
            if (rank[rx], rx) < (rank[ry], ry):
                parent[ry] = rx
            else:
                parent[rx] = ry
    return np.array([_find(parent, k) for k in range(n)], dtype=np.int64)


def near_duplicates(ph: np.ndarray, rank: np.ndarray, radius: int) -> np.ndarray:
    """For each image the best-ranked image of its near-duplicate cluster (no verification)."""
    i, j = candidate_pairs(ph, radius)
    return clusters(len(ph), i, j, rank)
