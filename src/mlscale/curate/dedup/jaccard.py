"""Exact Jaccard similarity of all document pairs, for ground truth (sparse matrix product).

Each document becomes a binary row over the distinct shingles of the corpus (the same
shingle hashes the MinHash signatures summarise); X @ X.T counts shared shingles of every
pair that shares any, and |A & B| / (|A| + |B| - |A & B|) is their Jaccard similarity.
Rows are processed in blocks so memory stays bounded by the block's pairs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse

from mlscale.curate.dedup.minhash import shingle_hashes


def shingle_matrix(texts: Sequence[str], ngram: int = 5) -> scipy.sparse.csr_matrix:
    """(n, distinct shingles) binary CSR matrix of the documents' shingle sets."""
    sets = [shingle_hashes(t, ngram) for t in texts]
    lengths = np.fromiter((s.shape[0] for s in sets), dtype=np.int64, count=len(sets))
    flat = np.concatenate(sets) if sets else np.empty(0, np.uint64)
    _, columns = np.unique(flat, return_inverse=True)
    indptr = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    data = np.ones(flat.shape[0], dtype=np.int32)
    cols = columns.astype(np.int64).ravel()
    return scipy.sparse.csr_matrix((data, cols, indptr),
                                   shape=(len(sets), int(cols.max(initial=-1)) + 1))


def exact_jaccard_pairs(texts: Sequence[str], threshold: float, ngram: int = 5,
                        block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) with exact shingle Jaccard >= threshold, and their similarities."""
    x = shingle_matrix(texts, ngram)
    xt = x.T.tocsr()
    sizes = np.asarray(x.sum(axis=1)).ravel().astype(np.int64)
    pairs, sims = [], []
    for lo in range(0, x.shape[0], block):
        shared = (x[lo: lo + block] @ xt).tocoo()
        i = shared.row.astype(np.int64) + lo
        j = shared.col.astype(np.int64)
        upper = i < j
        i, j, inter = i[upper], j[upper], shared.data[upper].astype(np.int64)
        union = sizes[i] + sizes[j] - inter
        # Compare integers: inter / union >= threshold without float rounding at the edge.
        keep = inter >= np.ceil(threshold * union - 1e-9)
        pairs.append(np.stack([i[keep], j[keep]], axis=1))
        sims.append(inter[keep] / union[keep])
    if not pairs:
        return np.empty((0, 2), np.int64), np.empty(0)
    out = np.concatenate(pairs)
    order = np.lexsort((out[:, 1], out[:, 0]))
    return out[order], np.concatenate(sims)[order]
