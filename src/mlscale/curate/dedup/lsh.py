"""Locality-sensitive hashing over MinHash signatures: band keys, bucket pairs, verification.

Band b of a signature is its entries [b*rows, (b+1)*rows); two documents fall in the same
bucket of band b when those entries are all equal, which for Jaccard s happens with
probability s^rows, so a pair is a candidate in at least one of `bands` bands with
probability 1 - (1 - s^rows)^bands. A band's entries are compressed to one 64-bit key
(collisions between different bands' contents: ~n^2 / 2^65, negligible).

Pairing rule inside one band (`bucket_pairs`): members of a bucket are ordered by
document id and each is paired with the next `max_bucket - 1` members. A bucket of up to
`max_bucket` documents therefore gets all its pairs (every pair can be verified on its
own); a larger one (boilerplate shared by thousands of pages) gets at most
`max_bucket - 1` pairs per member instead of a quadratic number, and stays connected
through the chain of consecutive members, which is what FineWeb's unverified
clustering uses.
"""
from __future__ import annotations

import numpy as np

from mlscale.curate.dedup.minhash import EMPTY_HASH

NO_BUCKET = np.uint64(0xFFFFFFFFFFFFFFFF)  # band key of an empty document: never paired

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on a uint64 array (wrapping multiplies)."""
    x = (x ^ (x >> np.uint64(30))) * _C1
    x = (x ^ (x >> np.uint64(27))) * _C2
    return x ^ (x >> np.uint64(31))


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: one hash of each band's `rows` signature entries.

    Documents with the empty sentinel signature get `NO_BUCKET` in every band; a real
    key that happens to equal `NO_BUCKET` is moved to `NO_BUCKET - 1`.
    """
    sigs = np.asarray(sigs, dtype=np.uint64)
    if sigs.ndim != 2 or sigs.shape[1] < bands * rows:
        raise ValueError(f"signatures of shape {sigs.shape} have fewer than "
                         f"bands * rows = {bands * rows} columns")
    n = sigs.shape[0]
    keys = np.empty((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            h = np.full(n, _GOLDEN * np.uint64(band + 1), dtype=np.uint64)
            for col in range(band * rows, (band + 1) * rows):
                h = _mix(h ^ sigs[:, col])
            keys[:, band] = h
    keys[keys == NO_BUCKET] = NO_BUCKET - np.uint64(1)
    keys[sigs[:, 0] == EMPTY_HASH] = NO_BUCKET
    return keys


def bucket_pairs(keys: np.ndarray, doc_ids: np.ndarray, max_bucket: int = 64) -> np.ndarray:
    """(p, 2) int64 candidate pairs (id_a < id_b) of ONE band; see the module docstring.

    `keys` are one band's keys (n,), `doc_ids` the documents' int64 ids (n,), unique.
    Pairs are unique within the band and come sorted.
    """
    keys = np.asarray(keys, dtype=np.uint64).ravel()
    doc_ids = np.asarray(doc_ids, dtype=np.int64).ravel()
    if keys.shape != doc_ids.shape:
        raise ValueError(f"{keys.shape[0]} keys but {doc_ids.shape[0]} document ids")
    if max_bucket < 2:
        raise ValueError("max_bucket must be at least 2")
    order = np.lexsort((doc_ids, keys))
    k = keys[order]
    ids = doc_ids[order]
    # Only members of buckets with two or more documents matter; drop singletons early.
    same_next = np.zeros(k.shape[0], dtype=bool)
    same_next[:-1] = k[:-1] == k[1:]
    in_bucket = same_next.copy()
    in_bucket[1:] |= same_next[:-1]
    in_bucket &= k != NO_BUCKET
    k = k[in_bucket]
    ids = ids[in_bucket]
    out = []
    for gap in range(1, max_bucket):
        if gap >= k.shape[0]:
            break
        match = k[:-gap] == k[gap:]
        if not match.any():
            break  # buckets are contiguous runs: none longer than `gap` remains
        out.append(np.stack([ids[:-gap][match], ids[gap:][match]], axis=1))
    if not out:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(out)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Rowwise fraction of equal signature entries; 0 where either side is empty."""
    a = np.asarray(sig_a, dtype=np.uint64)
    b = np.asarray(sig_b, dtype=np.uint64)
    equal = (a == b) & (a != EMPTY_HASH)
    return equal.mean(axis=-1)
