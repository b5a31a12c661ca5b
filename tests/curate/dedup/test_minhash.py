"""MinHash signatures: exact permutation arithmetic, and estimates that track true Jaccard."""
from __future__ import annotations

import numpy as np
import pytest

from mlscale.curate.dedup import (EMPTY_HASH, NearConfig, estimated_jaccard,
                                  minhash_signatures, shingle_hashes)
from mlscale.curate.dedup.minhash import MERSENNE_61, permutations
from sample_data import shakespeare_text


@pytest.fixture(scope="module")
def chunks() -> list[str]:
    text = shakespeare_text()
    return [text[i: i + 4000] for i in range(0, 400_000, 4000)]


def _edit(text: str, rate: float, rng: np.random.Generator) -> str:
    """Replace a fraction `rate` of the words by new ones (controlled edits)."""
    words = text.split()
    for k in rng.choice(len(words), int(round(rate * len(words))), replace=False):
        words[k] = f"edit{rng.integers(1 << 30)}"
    return " ".join(words)


def _exact_jaccard(a: str, b: str) -> float:
    sa, sb = shingle_hashes(a), shingle_hashes(b)
    return len(np.intersect1d(sa, sb)) / len(np.union1d(sa, sb))


def test_signature_is_min_of_exact_universal_permutations(chunks):
    cfg = NearConfig(num_perm=16, seed=7)
    text = chunks[0][:600]
    sig = minhash_signatures([text], cfg)[0]
    a, b = permutations(cfg.num_perm, cfg.seed)
    shingles = [int(h) for h in shingle_hashes(text)]
    p = MERSENNE_61
    expected = [min((int(a[j]) * h + int(b[j])) % p for h in shingles) for j in range(16)]
    assert sig.tolist() == expected


def test_estimate_tracks_exact_jaccard_on_real_text(chunks):
    rng = np.random.default_rng(0)
    cfg = NearConfig()
    originals, edited = [], []
    for i, chunk in enumerate(chunks[:60]):
        originals.append(chunk)
        edited.append(_edit(chunk, [0.0, 0.01, 0.03, 0.06, 0.1, 0.2][i % 6], rng))
    sigs = minhash_signatures(originals + edited, cfg)
    est = estimated_jaccard(sigs[:60], sigs[60:])
    exact = np.array([_exact_jaccard(a, b) for a, b in zip(originals, edited)])
    assert exact.min() < 0.5 < 0.99 < exact.max() + 1e-9  # the edits span the range
    sd = np.sqrt(np.maximum(exact * (1 - exact), 1e-4) / cfg.num_perm)
    assert np.all(np.abs(est - exact) <= 4 * sd + 1e-9)
    assert np.mean(np.abs(est - exact)) < 0.03
    # Unrelated chunks share (almost) nothing.
    assert estimated_jaccard(sigs[0], sigs[1]) < 0.05


def test_batches_do_not_change_signatures(chunks):
    cfg = NearConfig(num_perm=32)
    together = minhash_signatures(chunks[:10], cfg)
    alone = np.concatenate([minhash_signatures([c], cfg) for c in chunks[:10]])
    np.testing.assert_array_equal(together, alone)
    assert together.dtype == np.uint64 and together.shape == (10, 32)
    assert together.max() < MERSENNE_61


def test_normalisation_applies_before_shingling():
    cfg = NearConfig(num_perm=32)
    a, b = minhash_signatures(["The year 1999, said Émile: go now!",
                               "the YEAR 2024 said emile go now"], cfg)
    np.testing.assert_array_equal(a, b)


def test_short_and_empty_documents():
    cfg = NearConfig(num_perm=32, ngram=5)
    sigs = minhash_signatures(["one two", "one two", "two one", "one two three", "",
                               "?! ...", ""], cfg)
    np.testing.assert_array_equal(sigs[0], sigs[1])  # one shingle of all (two) words
    assert estimated_jaccard(sigs[0], sigs[2]) < 0.2  # word order matters
    assert estimated_jaccard(sigs[0], sigs[3]) < 0.2
    assert np.all(sigs[4] == EMPTY_HASH) and np.all(sigs[5] == EMPTY_HASH)
    assert estimated_jaccard(sigs[4], sigs[6]) == 0.0  # empty never matches empty
    assert len(shingle_hashes("one two")) == 1
    assert len(shingle_hashes("")) == 0
    assert len(shingle_hashes("a b c d e f g")) == 3


def test_seed_changes_permutations(chunks):
    s1 = minhash_signatures(chunks[:2], NearConfig(num_perm=32, seed=1))
    s2 = minhash_signatures(chunks[:2], NearConfig(num_perm=32, seed=2))
    assert not np.array_equal(s1, s2)
