"""Gopher repetition rules: boundaries, the greedy n-gram scan, and a plain reference."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from filter_helpers import prose, verdict

from mlscale.curate.filters.gopher_repetition import (
    GopherRepetitionConfig, GopherRepetitionFilter, _extend_ids, _greedy_repeated_chars, _NGrams)
from mlscale.curate.text import split_words
from mlscale.errors import ConfigError

OFF = dict(max_dup_para_frac=None, max_dup_para_char_frac=None, max_dup_line_frac=None,
           max_dup_line_char_frac=None, top_ngram_sizes=[], top_ngram_max_fracs=[],
           dup_ngram_sizes=[], dup_ngram_max_fracs=[])


def only(**rules) -> GopherRepetitionFilter:
    return GopherRepetitionFilter(GopherRepetitionConfig(**{**OFF, **rules}))


# -------------------------------------------------------------- a plain reference (datatrove)
def find_duplicates(items: list[str]) -> tuple[int, int]:
    seen: set[str] = set()
    dup = chars = 0
    for x in items:
        if x in seen:
            dup += 1
            chars += len(x)
        else:
            seen.add(x)
    return dup, chars


def top_ngram_chars(words: list[str], n: int) -> int | None:
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return None
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def greedy_dup_chars(words: list[str], n: int) -> int:
    seen: set[tuple[str, ...]] = set()
    total = i = 0
    while i < len(words) - n + 1:
        gram = tuple(words[i:i + n])
        if gram in seen:
            total += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return total


def reference(text: str, c: GopherRepetitionConfig) -> str | None:
    import re

    if not text:
        return "empty"
    paras = re.split(r"\n{2,}", text.strip())
    dup, chars = find_duplicates(paras)
    if dup / len(paras) > c.max_dup_para_frac:
        return "dup_para_frac"
    if chars / len(text) > c.max_dup_para_char_frac:
        return "dup_para_char_frac"
    lines = re.split(r"\n+", text)
    dup, chars = find_duplicates(lines)
    if dup / len(lines) > c.max_dup_line_frac:
        return "dup_line_frac"
    if chars / len(text) > c.max_dup_line_char_frac:
        return "dup_line_char_frac"
    words = split_words(text)
    for n, frac in zip(c.top_ngram_sizes, c.top_ngram_max_fracs):
        top = top_ngram_chars(words, n)
        if top is not None and top / len(text) > frac:
            return f"top_{n}_gram"
    for n, frac in zip(c.dup_ngram_sizes, c.dup_ngram_max_fracs):
        if greedy_dup_chars(words, n) / len(text) > frac:
            return f"dup_{n}_gram"
    return None


def test_matches_the_plain_reference_on_real_text(real_texts):
    cfg = GopherRepetitionConfig()
    f = GopherRepetitionFilter(cfg)
    reasons = []
    for text in real_texts:
        want = reference(text, cfg)
        got = verdict(f, text)
        assert got == (None if want is None else f"gopher_repetition:{want}"), text[:200]
        reasons.append(got)
    assert reasons.count(None) >= 10 and len(set(reasons)) >= 3


def test_exact_shares_match_the_reference_on_real_text(real_texts):
    for text in real_texts[::5]:
        words = split_words(text)
        grams = _NGrams(words)
        for n in range(2, 11):
            grams.advance_to(n)
            if len(grams.ids) == 0:
                break
            counts = grams.counts()
            best = int(np.argmax(counts))
            at = int(np.argmax(grams.ids == best))
            assert (int(grams.chars()[at]) + n - 1) * int(counts.max()) == top_ngram_chars(words, n)
            assert _greedy_repeated_chars(grams.ids, grams.chars(), n, grams.distinct) == \
                greedy_dup_chars(words, n)


# ------------------------------------------------------------------------------ boundaries
def test_duplicate_paragraphs_and_lines_at_the_boundary():
    paras = [prose(8, i) for i in range(7)]
    text = "\n\n".join(paras + paras[:3])  # 3 of 10 paragraphs repeat
    assert verdict(only(max_dup_para_frac=0.3), text) is None
    assert verdict(only(max_dup_para_frac=0.29), text) == "gopher_repetition:dup_para_frac"
    share = sum(len(p) for p in paras[:3]) / len(text)
    assert verdict(only(max_dup_para_char_frac=share), text) is None
    assert verdict(only(max_dup_para_char_frac=share - 1e-9), text) == "gopher_repetition:dup_para_char_frac"
    lines = text.replace("\n\n", "\n")
    assert verdict(only(max_dup_line_frac=0.3), lines) is None
    assert verdict(only(max_dup_line_frac=0.29), lines) == "gopher_repetition:dup_line_frac"
    share = sum(len(p) for p in paras[:3]) / len(lines)
    assert verdict(only(max_dup_line_char_frac=share), lines) is None
    assert verdict(only(max_dup_line_char_frac=share - 1e-9), lines) == "gopher_repetition:dup_line_char_frac"


def test_top_ngram_share_and_ties_to_the_earliest():
    text = "alpha beta gamma alpha beta delta alpha beta"  # "alpha beta" x3 = 30 chars
    share = 30 / len(text)
    assert verdict(only(top_ngram_sizes=[2], top_ngram_max_fracs=[share]), text) is None
    assert verdict(only(top_ngram_sizes=[2], top_ngram_max_fracs=[share - 1e-9]), text) == \
        "gopher_repetition:top_2_gram"
    tie = "aa b cccc d aa b cccc d"  # "aa b", "b cccc", "cccc d" each twice: the first wins
    grams = _NGrams(split_words(tie))
    grams.advance_to(2)
    assert (int(grams.chars()[int(np.argmax(grams.ids == np.argmax(grams.counts())))]) + 1) == len("aa b")


def test_greedy_duplicated_ngrams_jump_past_a_repeat():
    text = " ".join(["a b c d e"] * 3)  # 29 chars; repeats at word 5 and word 10: 10 chars
    assert greedy_dup_chars(split_words(text), 5) == 10
    assert verdict(only(dup_ngram_sizes=[5], dup_ngram_max_fracs=[10 / 29]), text) is None
    assert verdict(only(dup_ngram_sizes=[5], dup_ngram_max_fracs=[10 / 29 - 1e-9]), text) == \
        "gopher_repetition:dup_5_gram"


def test_kernels_compiled_equal_plain_python():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 6, size=400)
    prev = tokens.copy()
    out_fast = np.empty(399, dtype=np.int64)
    from mlscale.curate.filters.gopher_repetition import _kernels

    greedy, extend = _kernels()
    k_fast = extend(prev, tokens, 2, out_fast)
    out_py = np.empty(399, dtype=np.int64)
    assert _extend_ids(prev, tokens, 2, out_py) == k_fast and (out_py == out_fast).all()
    pairs = list(zip(tokens[:-1].tolist(), tokens[1:].tolist()))
    first = {p: i for i, p in reversed(list(enumerate(pairs)))}
    order = sorted(first, key=first.get)  # ids follow the order of first occurrence
    assert out_fast.tolist() == [order.index(p) for p in pairs]
    chars = rng.integers(1, 9, size=399)
    assert greedy(out_fast, chars, 2, k_fast) == _greedy_repeated_chars(out_fast, chars, 2, k_fast)


def test_sizes_and_fractions_must_pair_up():
    with pytest.raises(ConfigError, match="dup_ngram_max_fracs: give one fraction per size"):
        GopherRepetitionConfig(dup_ngram_sizes=[5, 6], dup_ngram_max_fracs=[0.1]).validate()
    assert verdict(GopherRepetitionFilter(), "") == "gopher_repetition:empty"
