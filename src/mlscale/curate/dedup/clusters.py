"""Duplicate clusters from pairs, and one deterministic survivor per cluster.

A cluster is a connected component of the graph whose edges are the duplicate pairs.
Its survivor is the member with the lowest order key (e.g. the global document index),
so the result does not depend on the order in which shards or pairs arrive. Clusters of
two or more documents are numbered 0, 1, ... in the order of their survivors' keys.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components as _scipy_components


def connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """(n,) int64 component label of each of `n` documents, given (p, 2) index pairs."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pair indices must lie in [0, {n}); got "
                         f"[{pairs.min()}, {pairs.max()}]")
    graph = scipy.sparse.coo_matrix(
        (np.ones(pairs.shape[0], dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n)
    ).tocsr()
    _, labels = _scipy_components(graph, directed=False)
    return labels.astype(np.int64)


def choose_survivors(labels: np.ndarray, order_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per document: the index of its cluster's survivor, and its cluster id.

    The survivor of a cluster is the member with the lowest `order_key` (keys should be
    unique; ties go to the earlier position). A document that survives is its own
    survivor; a removed one points at its survivor (its `duplicate_of`). Cluster ids are
    0.. for clusters of two or more documents, in the order of their survivors' keys,
    and -1 for documents that are in no cluster.
    """
    labels = np.asarray(labels).ravel()
    order_key = np.asarray(order_key).ravel()
    n = labels.shape[0]
    if order_key.shape[0] != n:
        raise ValueError(f"{n} labels but {order_key.shape[0]} order keys")
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    by_key = np.argsort(order_key, kind="stable")
    uniq, first = np.unique(labels[by_key], return_index=True)
    survivor_of_label = by_key[first]  # per unique label, in `uniq` order
    slot = np.searchsorted(uniq, labels)
    survivor = survivor_of_label[slot].astype(np.int64)
    sizes = np.bincount(slot, minlength=uniq.shape[0])
    multi = sizes >= 2
    # Rank of each multi-member cluster by its survivor's position in key order.
    cluster_of_label = np.full(uniq.shape[0], -1, dtype=np.int64)
    ranked = np.argsort(first[multi], kind="stable")
    ids = np.empty(ranked.shape[0], dtype=np.int64)
    ids[ranked] = np.arange(ranked.shape[0])
    cluster_of_label[multi] = ids
    return survivor, cluster_of_label[slot]
