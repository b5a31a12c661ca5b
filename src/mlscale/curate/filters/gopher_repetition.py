"""Gopher repetition rules (Rae et al. 2021, table A1; datatrove's GopherRepetitionFilter).

Paragraphs are split at two or more newlines, lines at runs of newlines; a "duplicate"
is every occurrence after the first. Word n-grams use `text.split_words` tokens:
- top n-gram (n = 2, 3, 4): characters of the most frequent n-gram (words joined by one
  space, ties to the earliest) times its count, over the text length;
- duplicated n-grams (n = 5..10): datatrove's greedy scan from the left: an n-gram seen
  before adds its characters and the scan jumps past it; over the text length.

Speed: tokens become integer ids once; the ids of the n-grams for n = 2..10 are built
from the (n-1)-gram ids and the next token id by a small numba kernel with an exact
hash table (pairs of ids are compared, so there are no collisions), and the greedy scan,
sequential by nature, is another that runs only when some n-gram does repeat.

Reason codes of the `gopher_repetition` step (thresholds from shared/anchors.md):
    gopher_repetition:empty               the text is empty
    gopher_repetition:dup_para_frac       duplicate paragraphs > 0.30 of paragraphs
    gopher_repetition:dup_para_char_frac  characters in duplicate paragraphs > 0.20
    gopher_repetition:dup_line_frac       duplicate lines > 0.30 of lines
    gopher_repetition:dup_line_char_frac  characters in duplicate lines > 0.20
    gopher_repetition:top_<n>_gram        top n-gram share > 0.20 / 0.18 / 0.16 (n = 2, 3, 4)
    gopher_repetition:dup_<n>_gram        duplicated n-gram share > 0.15 .. 0.10 (n = 5..10)
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from mlscale.config import option
from mlscale.curate.document import Document
from mlscale.curate.step import Filter
from mlscale.curate.text import split_lines_nonempty, split_paragraphs, split_words
from mlscale.errors import ConfigError


@dataclass
class GopherRepetitionConfig:
    """Gopher's repetition heuristics (None switches a rule off)."""

    enabled: bool = option(True, "run the Gopher repetition rules")
    max_dup_para_frac: float | None = option(0.3, "maximum fraction of duplicate paragraphs", min=0, max=1)
    max_dup_para_char_frac: float | None = option(0.2, "maximum character share of duplicate paragraphs",
                                                  min=0, max=1)
    max_dup_line_frac: float | None = option(0.3, "maximum fraction of duplicate lines", min=0, max=1)
    max_dup_line_char_frac: float | None = option(0.2, "maximum character share of duplicate lines",
                                                  min=0, max=1)
    top_ngram_sizes: list[int] = option([2, 3, 4], "n of the top n-gram rules")
    top_ngram_max_fracs: list[float] = option([0.20, 0.18, 0.16],
                                              "maximum character share of the top n-gram, per size")
    dup_ngram_sizes: list[int] = option([5, 6, 7, 8, 9, 10], "n of the duplicated n-gram rules")
    dup_ngram_max_fracs: list[float] = option([0.15, 0.14, 0.13, 0.12, 0.11, 0.10],
                                              "maximum character share of duplicated n-grams, per size")

    def validate(self) -> None:
        key = "quality.gopher_repetition"
        for sizes, fracs, what in ((self.top_ngram_sizes, self.top_ngram_max_fracs, "top_ngram"),
                                   (self.dup_ngram_sizes, self.dup_ngram_max_fracs, "dup_ngram")):
            if len(sizes) != len(fracs):
                raise ConfigError(f"{key}.{what}_max_fracs: give one fraction per size in "
                                  f"{key}.{what}_sizes ({len(sizes)} sizes, {len(fracs)} fractions)")
            if any(n < 1 for n in sizes):
                raise ConfigError(f"{key}.{what}_sizes: n-gram sizes must be >= 1")


def duplicate_stats(items: list[str]) -> tuple[int, int]:
    """(elements that repeat an earlier one, their characters): datatrove's find_duplicates."""
    distinct = dict.fromkeys(items)
    return len(items) - len(distinct), sum(map(len, items)) - sum(map(len, distinct))


def _greedy_repeated_chars(ids: np.ndarray, chars: np.ndarray, n: int, n_ids: int) -> int:
    """Scan left to right; an n-gram seen at a visited position adds its chars and jumps n."""
    seen = np.zeros(n_ids, dtype=np.bool_)
    total = 0
    i = 0
    m = ids.shape[0]
    while i < m:
        g = ids[i]
        if seen[g]:
            total += chars[i]
            i += n
        else:
            seen[g] = True
            i += 1
    return total


def _extend_ids(prev: np.ndarray, tokens: np.ndarray, n: int, out: np.ndarray) -> int:
    """Dense ids of the n-grams from (n-1)-gram ids and token ids; returns how many distinct.

    An open-addressing table maps the exact pair (previous id, next token id) to a new id;
    ids are given in order of first occurrence, so a smaller id was seen earlier.
    """
    m = out.shape[0]
    size = 1
    while size < 2 * m:
        size *= 2
    mask = size - 1
    keys_a = np.full(size, -1, dtype=np.int64)
    keys_b = np.empty(size, dtype=np.int64)
    values = np.empty(size, dtype=np.int64)
    distinct = 0
    for i in range(m):
        a = prev[i]
        b = tokens[i + n - 1]
        h = a * 0x9E3779B1 + b  # ids < 2**31, so no overflow
        slot = (h ^ (h >> 17)) & mask
        while True:
            if keys_a[slot] == -1:
                keys_a[slot] = a
                keys_b[slot] = b
                values[slot] = distinct
                out[i] = distinct
                distinct += 1
                break
            if keys_a[slot] == a and keys_b[slot] == b:
                out[i] = values[slot]
                break
            slot = (slot + 1) & mask
    return distinct


@lru_cache(maxsize=1)
def _kernels() -> tuple[Any, Any]:
    import numba  # imported here so that importing this module stays cheap

    jit = numba.njit(cache=True, nogil=True)
    return jit(_greedy_repeated_chars), jit(_extend_ids)


class _NGrams:
    """Exact dense ids of the word n-grams of one document, built up one n at a time."""

    def __init__(self, tokens: list[str]):
        vocab: dict[str, int] = {}
        self.n_tokens = len(tokens)
        # setdefault hands each new token the next id: ids in order of first occurrence
        ids = map(vocab.setdefault, tokens, itertools.count())
        raw = np.fromiter(ids, dtype=np.int64, count=self.n_tokens)
        # count() advanced on every token, so re-number densely (order is kept)
        _, self.ids = np.unique(raw, return_inverse=True)
        self.token_ids = self.ids
        self.distinct = len(vocab)
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=self.n_tokens)
        self.cum = np.concatenate(([0], np.cumsum(lengths)))
        self.n = 1

    def advance_to(self, n: int) -> None:
        """Make `ids` the dense ids of the n-grams (n >= current n)."""
        _, extend = _kernels()
        while self.n < n:
            self.n += 1
            m = max(self.n_tokens - self.n + 1, 0)
            out = np.empty(m, dtype=np.int64)
            self.distinct = extend(self.ids, self.token_ids, self.n, out) if m else 0
            self.ids = out

    def counts(self) -> np.ndarray:
        """Occurrences of each distinct n-gram, indexed by id."""
        return np.bincount(self.ids, minlength=self.distinct)

    def chars(self) -> np.ndarray:
        """Characters of each n-gram's words (no separators)."""
        m = len(self.ids)
        return self.cum[self.n:self.n + m] - self.cum[:m]


class GopherRepetitionFilter(Filter):
    """Drop documents with too much repeated content."""

    name = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig | None = None):
        self.cfg = cfg or GopherRepetitionConfig()

    def check(self, doc: Document) -> str | None:
        c = self.cfg
        text = doc.text
        if not text:
            return "gopher_repetition:empty"
        size = len(text)

        paragraphs = split_paragraphs(text)
        dup, dup_chars = duplicate_stats(paragraphs)
        if c.max_dup_para_frac is not None and dup / len(paragraphs) > c.max_dup_para_frac:
            return "gopher_repetition:dup_para_frac"
        if c.max_dup_para_char_frac is not None and dup_chars / size > c.max_dup_para_char_frac:
            return "gopher_repetition:dup_para_char_frac"

        lines = split_lines_nonempty(text)
        dup, dup_chars = duplicate_stats(lines)
        if c.max_dup_line_frac is not None and dup / len(lines) > c.max_dup_line_frac:
            return "gopher_repetition:dup_line_frac"
        if c.max_dup_line_char_frac is not None and dup_chars / size > c.max_dup_line_char_frac:
            return "gopher_repetition:dup_line_char_frac"

        rules = ([("top", n, f) for n, f in zip(c.top_ngram_sizes, c.top_ngram_max_fracs)]
                 + [("dup", n, f) for n, f in zip(c.dup_ngram_sizes, c.dup_ngram_max_fracs)])
        if not rules:
            return None
        ngrams = _NGrams(split_words(text))
        for kind, n, max_frac in rules:
            if n < ngrams.n:  # sizes out of order: start again from unigrams
                ngrams = _NGrams(split_words(text))
            ngrams.advance_to(n)
            if len(ngrams.ids) == 0:
                continue
            if kind == "top":
                counts = ngrams.counts()
                top = int(counts.max())
                # ties go to the n-gram seen first (the smallest id), as Counter.most_common
                best_id = int(np.argmax(counts))
                at = int(np.argmax(ngrams.ids == best_id))
                top_chars = (int(ngrams.chars()[at]) + n - 1) * top
                if top_chars / size > max_frac:
                    return f"gopher_repetition:top_{n}_gram"
            elif ngrams.distinct < len(ngrams.ids):  # some n-gram repeats
                greedy, _ = _kernels()
                repeated = greedy(ngrams.ids, ngrams.chars(), n, ngrams.distinct)
                if repeated / size > max_frac:
                    return f"gopher_repetition:dup_{n}_gram"
        return None

