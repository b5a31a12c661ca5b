"""LSH: band keys, the empirical S-curve, and the bucket pairing rule."""
from __future__ import annotations

import numpy as np

from mlscale.curate.dedup import (NO_BUCKET, NearConfig, band_keys, bucket_pairs,
                                  connected_components, estimated_jaccard, lsh_probability,
                                  minhash_signatures)


def _letters(x: int) -> str:
    """A word made of letters only (digits would all normalise to "0")."""
    out = []
    while True:
        x, d = divmod(int(x), 26)
        out.append(chr(97 + d))
        if not x:
            return "".join(out)


def _pair_with_jaccard(s: float, rng: np.random.Generator, size: int = 120) -> tuple[str, str]:
    """Two texts whose word sets (1-gram shingles) have Jaccard exactly `s`."""
    shared = int(round(2 * size * s / (1 + s)))  # k / (2 * size - k) = s
    words = [_letters(x) for x in rng.choice(1 << 40, 2 * size - shared, replace=False)]
    a = words[:size]
    b = words[:shared] + words[size:]
    return " ".join(a), " ".join(b)


def test_s_curve_matches_theory():
    rng = np.random.default_rng(1)
    cfg = NearConfig(ngram=1)
    bands, rows = cfg.band_rows()
    trials = 250
    for s in (0.4, 0.6, 0.7, 0.8, 0.9):
        texts = [t for _ in range(trials) for t in _pair_with_jaccard(s, rng)]
        sigs = minhash_signatures(texts, cfg)
        keys = band_keys(sigs, bands, rows)
        caught = np.any(keys[0::2] == keys[1::2], axis=1).mean()
        p = float(lsh_probability(s, bands, rows))
        assert abs(caught - p) <= 4 * np.sqrt(p * (1 - p) / trials) + 0.01, (s, caught, p)
        # Each signature entry collides with probability s.
        assert abs(estimated_jaccard(sigs[0::2], sigs[1::2]).mean() - s) < 0.02


def test_band_keys_shape_and_empty_documents():
    sigs = minhash_signatures(["a b c d e f", "a b c d e f", "", ""], NearConfig())
    keys = band_keys(sigs, 14, 8)
    assert keys.shape == (4, 14) and keys.dtype == np.uint64
    assert np.array_equal(keys[0], keys[1])
    assert np.all(keys[2:] == NO_BUCKET)
    assert bucket_pairs(keys[:, 0], np.arange(4)).tolist() == [[0, 1]]
    # Different bands of the same contents get different keys.
    same = np.tile(sigs[:1, :8], (1, 14))
    assert len(set(band_keys(same, 14, 8)[0].tolist())) == 14


def test_bucket_pairs_small_buckets_all_pairs():
    keys = np.array([5, 5, 5, 7, 7, 9, NO_BUCKET, NO_BUCKET], dtype=np.uint64)
    ids = np.array([10, 3, 7, 1, 2, 0, 4, 8])
    assert bucket_pairs(keys, ids).tolist() == [[1, 2], [3, 7], [3, 10], [7, 10]]
    # With max_bucket=2 a bucket of three becomes the chain of consecutive members.
    assert bucket_pairs(keys, ids, max_bucket=2).tolist() == [[1, 2], [3, 7], [7, 10]]
    assert bucket_pairs(np.array([1, 2, 3], np.uint64), np.arange(3)).shape == (0, 2)


def test_bucket_pairs_huge_bucket_is_bounded_and_connected():
    n = 1000
    keys = np.full(n, 42, dtype=np.uint64)
    ids = np.random.default_rng(0).permutation(n)
    pairs = bucket_pairs(keys, ids, max_bucket=64)
    assert pairs.shape[0] == sum(n - gap for gap in range(1, 64))
    assert np.all(pairs[:, 0] < pairs[:, 1])
    assert len(np.unique(pairs, axis=0)) == len(pairs)
    assert np.all(np.abs(pairs[:, 1] - pairs[:, 0]) < 64)  # neighbours in id order
    assert len(set(connected_components(n, pairs).tolist())) == 1
