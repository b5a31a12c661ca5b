"""near_duplicates end to end against exact Jaccard ground truth on real text."""
from __future__ import annotations

import numpy as np
import pytest

from mlscale.curate.dedup import NearConfig, near_duplicates, shingle_hashes
from mlscale.curate.dedup.jaccard import exact_jaccard_pairs
from sample_data import shakespeare_text


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """Real chunks plus copies with 0.5-20% of their words replaced, and empty documents."""
    text = shakespeare_text()
    base = [text[i: i + 2500] for i in range(0, 300_000, 2500)]
    rng = np.random.default_rng(11)
    docs = list(base)
    for i in range(len(base)):
        words = base[i].split()
        rate = [0.005, 0.01, 0.02, 0.04, 0.08, 0.2][i % 6]
        for k in rng.choice(len(words), max(1, int(rate * len(words))), replace=False):
            words[k] = "replaced"
        docs.append(" ".join(words))
    return docs + ["", "", "!!!"]


def _brute_force_pairs(docs: list[str], threshold: float) -> set[tuple[int, int]]:
    sets = [set(shingle_hashes(d).tolist()) for d in docs]
    out = set()
    for i in range(len(docs)):
        for j in range(i + 1, len(docs)):
            if sets[i] and sets[j] and len(sets[i] & sets[j]) >= threshold * len(sets[i] | sets[j]):
                out.add((i, j))
    return out


def test_sparse_ground_truth_equals_brute_force(corpus):
    docs = corpus[:40] + corpus[120:160] + corpus[-3:]
    pairs, sims = exact_jaccard_pairs(docs, 0.5, block=7)
    assert set(map(tuple, pairs.tolist())) == _brute_force_pairs(docs, 0.5)
    assert len(pairs) > 10 and np.all(sims >= 0.5) and np.all(sims <= 1.0)


def test_pairs_match_exact_jaccard(corpus):
    truth = set(map(tuple, exact_jaccard_pairs(corpus, 0.8)[0].tolist()))
    result = near_duplicates(corpus, NearConfig())
    found = set(map(tuple, result.pairs.tolist()))
    assert len(truth) > 40
    tp = len(found & truth)
    assert tp / len(found) >= 0.9 and tp / len(truth) >= 0.9
    assert result.candidates >= len(found)
    # Every removed document points at an earlier survivor in its own cluster.
    removed = np.nonzero(result.removed)[0]
    assert np.all(result.duplicate_of[removed] < removed)
    assert np.all(result.cluster_id[removed] == result.cluster_id[result.duplicate_of[removed]])
    assert np.all(result.cluster_id[removed] >= 0)
    assert not result.removed[-3:].any() and np.all(result.cluster_id[-3:] == -1)


def test_verification_off_is_finewebs_superset(corpus):
    on = near_duplicates(corpus, NearConfig())
    off = near_duplicates(corpus, NearConfig(verify=False))
    assert off.pairs.shape[0] == off.candidates >= on.pairs.shape[0]
    assert off.num_removed >= on.num_removed
    assert not off.removed[-3:].any()


def test_batching_does_not_change_the_result(corpus):
    whole = near_duplicates(corpus, NearConfig())
    streamed = near_duplicates(iter(corpus), NearConfig(), batch_size=17)
    np.testing.assert_array_equal(whole.duplicate_of, streamed.duplicate_of)
    np.testing.assert_array_equal(whole.cluster_id, streamed.cluster_id)
    np.testing.assert_array_equal(whole.pairs, streamed.pairs)


def test_empty_input():
    result = near_duplicates([], NearConfig())
    assert result.duplicate_of.shape == (0,) and result.pairs.shape == (0, 2)


def test_huge_bucket_of_copies_is_one_cluster(corpus):
    docs = [corpus[0]] * 300 + corpus[1:4]
    result = near_duplicates(docs, NearConfig(max_bucket=8))
    assert result.num_removed == 299
    assert np.all(result.duplicate_of[1:300] == 0) and not result.removed[300:].any()
    assert set(result.cluster_id[:300].tolist()) == {0}
    # Pairs are bounded by the window: at most 7 per member per band, not 300 * 299 / 2.
    assert result.candidates <= 300 * 7


def test_verification_from_file_equals_in_memory(corpus, tmp_path):
    from mlscale.curate.dedup import _verify_from_file, minhash_signatures, verify_pairs

    sigs = minhash_signatures(corpus[:60] + corpus[120:180], NearConfig())
    path = tmp_path / "sigs.u64"
    sigs.tofile(path)
    pairs = np.array([(i, j) for i in range(0, 120, 7) for j in range(i + 1, 120, 5)])
    pairs = np.concatenate([pairs, np.stack([np.arange(60), np.arange(60, 120)], axis=1)])
    expected = verify_pairs(pairs, sigs, 0.8)
    got = _verify_from_file(pairs, str(path), sigs.shape[1], 0.8, chunk=13)
    np.testing.assert_array_equal(got, expected)
    assert 20 < len(expected) < len(pairs)
