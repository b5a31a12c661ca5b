"""Clusters and survivors: deterministic, and the same whatever order shards arrive in."""
from __future__ import annotations

import numpy as np

from mlscale.curate.dedup import (NearConfig, band_keys, bucket_pairs, choose_survivors,
                                  connected_components, minhash_signatures, verify_pairs)
from sample_data import shakespeare_text


def test_components_and_survivors_by_hand():
    pairs = np.array([[1, 4], [4, 6], [2, 3]])
    labels = connected_components(8, pairs)
    assert labels[1] == labels[4] == labels[6] and labels[2] == labels[3]
    assert len(set(labels.tolist())) == 5  # {1,4,6} {2,3} {0} {5} {7}
    order_key = np.array([70, 60, 50, 40, 30, 20, 10, 0])  # later documents rank first
    survivor, cluster = choose_survivors(labels, order_key)
    assert survivor.tolist() == [0, 6, 3, 3, 6, 5, 6, 7]
    # Clusters numbered by their survivor's key: {1,4,6} (key 10) before {2,3} (key 40).
    assert cluster.tolist() == [-1, 0, 1, 1, 0, -1, 0, -1]


def test_empty_inputs():
    assert connected_components(0, np.empty((0, 2))).shape == (0,)
    survivor, cluster = choose_survivors(np.empty(0, np.int64), np.empty(0, np.int64))
    assert survivor.shape == cluster.shape == (0,)


def _near_pipeline(shards: list[tuple[np.ndarray, list[str]]], n: int, cfg: NearConfig):
    """The staged pipeline in miniature: signatures per shard, buckets per band, clusters."""
    bands, rows = cfg.band_rows()
    ids = np.concatenate([shard_ids for shard_ids, _ in shards])
    sigs = np.concatenate([minhash_signatures(texts, cfg) for _, texts in shards])
    keys = band_keys(sigs, bands, rows)
    pairs = np.unique(np.concatenate(
        [bucket_pairs(keys[:, b], ids) for b in range(bands)]), axis=0)
    by_id = np.empty_like(sigs)
    by_id[ids] = sigs
    pairs = verify_pairs(pairs, by_id, cfg.threshold)
    return choose_survivors(connected_components(n, pairs), np.arange(n))


def test_result_independent_of_shard_order():
    text = shakespeare_text()
    base = [text[i: i + 1500] for i in range(0, 90_000, 1500)]
    rng = np.random.default_rng(3)
    docs = list(base)
    for i in rng.choice(len(base), 30, replace=False):  # near copies, some chained
        words = base[i].split()
        words[rng.integers(len(words))] = "changed"
        docs.append(" ".join(words))
    docs += [docs[-1], docs[5], ""]
    n = len(docs)
    cfg = NearConfig()
    order = rng.permutation(n)
    shards = [(order[k::3], [docs[j] for j in order[k::3]]) for k in range(3)]
    first = _near_pipeline(shards, n, cfg)
    second = _near_pipeline(shards[::-1], n, cfg)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    survivor, cluster = first
    removed = survivor != np.arange(n)
    assert removed.sum() >= 30  # every near copy found
    assert np.all(survivor[removed] < np.nonzero(removed)[0])  # the earliest survives
    assert survivor[n - 3] == survivor[n - 4]  # exact copy joins its cluster
    assert cluster[n - 1] == -1  # the empty document is in no cluster
