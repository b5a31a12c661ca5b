"""Exact duplicates: 128-bit xxh3 of the normal form."""
from __future__ import annotations

import numpy as np
import xxhash

from mlscale.curate.dedup import exact_duplicates, exact_keys, normalize_text


def test_keys_are_xxh3_128_of_normal_form():
    texts = ["Hello, World!", "hello   world", "Hello World 2", "Hello World 7", ""]
    keys = exact_keys(texts)
    assert keys.shape == (5, 2) and keys.dtype == np.uint64
    for text, (hi, lo) in zip(texts, keys):
        expected = xxhash.xxh3_128_intdigest(normalize_text(text).encode())
        assert (int(hi) << 64) | int(lo) == expected
    assert np.array_equal(keys[0], keys[1]) and np.array_equal(keys[2], keys[3])
    assert not np.array_equal(keys[0], keys[2])


def test_raw_keys_distinguish_what_normalisation_merges():
    keys = exact_keys(["Hello, World!", "hello world"], normalize=False)
    assert not np.array_equal(keys[0], keys[1])
    assert (int(keys[0, 0]) << 64 | int(keys[0, 1])) == xxhash.xxh3_128_intdigest(b"Hello, World!")


def test_exact_duplicates_survivor_is_lowest_key():
    texts = ["b", "a", "B!", "c", "a.", "A"]
    survivor, cluster = exact_duplicates(exact_keys(texts), np.array([5, 4, 3, 2, 1, 0]))
    assert survivor.tolist() == [2, 5, 2, 3, 5, 5]
    assert cluster.tolist() == [1, 0, 1, -1, 0, 0]
