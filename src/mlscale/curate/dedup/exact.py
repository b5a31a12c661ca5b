"""Exact duplicates: a 128-bit xxh3 hash of each document's normal form.

Keys are an (n, 2) uint64 array: column 0 the high 64 bits of the XXH3-128 digest of the
UTF-8 normal form (`normalize.py`), column 1 the low 64 bits, so sorting rows
lexicographically sorts the 128-bit values. With 128 bits, a collision between two
different texts is out of reach for any corpus (birthday bound ~2^64 documents).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import xxhash

from mlscale.curate.dedup.clusters import choose_survivors
from mlscale.curate.dedup.normalize import encode_batch, normalize_bytes


def exact_keys(texts: Sequence[str], normalize: bool = True) -> np.ndarray:
    """(n, 2) uint64 [high, low] XXH3-128 of each text's normal form (or raw UTF-8)."""
    buf, offsets = encode_batch(texts)
    if normalize:
        buf, offsets = normalize_bytes(buf, offsets)
    data = buf.tobytes()
    digest = xxhash.xxh3_128_digest
    bounds = offsets.tolist()
    digests = b"".join(digest(data[bounds[i]: bounds[i + 1]]) for i in range(len(texts)))
    # The canonical digest is big-endian: first 8 bytes are the high half.
    return np.frombuffer(digests, dtype=">u8").astype(np.uint64).reshape(-1, 2)


def exact_labels(keys: np.ndarray) -> np.ndarray:
    """(n,) int64 labels, equal exactly for rows with equal 128-bit keys."""
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 2)
    n = keys.shape[0]
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    sorted_keys = keys[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    labels = np.empty(n, dtype=np.int64)
    labels[order] = np.cumsum(new_group) - 1
    return labels


def exact_duplicates(keys: np.ndarray, order_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Survivor index and cluster id per document (see `clusters.choose_survivors`)."""
    return choose_survivors(exact_labels(keys), order_key)
