"""Gopher quality rules (Rae et al. 2021, appendix A; datatrove's GopherQualityFilter).

Tokens are `text.split_words` tokens (words and punctuation, as spaCy gives them);
"non-symbol words" are the word tokens (those with a letter, digit or underscore). Ratios
per word divide by all tokens, as datatrove does. A threshold set to None switches its
rule off. Rules run in datatrove's order and the first that fails
names the reason.

Reason codes of the `gopher_quality` step (thresholds from shared/anchors.md):
    gopher_quality:too_few_words      fewer than `min_words` (50) non-symbol words
    gopher_quality:too_many_words     more than `max_words` (100,000) non-symbol words
    gopher_quality:short_words        mean non-symbol word length < `min_mean_word_length` (3)
    gopher_quality:long_words         mean non-symbol word length > `max_mean_word_length` (10)
    gopher_quality:hash_ratio         '#' per word > `max_hash_ratio` (0.1)
    gopher_quality:ellipsis_ratio     '...' or '…' per word > `max_ellipsis_ratio` (0.1)
    gopher_quality:bullet_lines       lines starting with '•' or '-' > `max_bullet_lines` (0.9)
    gopher_quality:ellipsis_lines     lines ending in an ellipsis > `max_ellipsis_lines` (0.3)
    gopher_quality:alpha_words        words with a letter < `min_alpha_words` (0.8)
    gopher_quality:stop_words         fewer than `min_stop_words` (2) distinct stop words
"""
from __future__ import annotations

import re

from dataclasses import dataclass

from mlscale.config import option
from mlscale.curate.document import Document
from mlscale.curate.step import Filter
from mlscale.curate.text import WORD_START_RE, count_alpha_tokens, split_words
from mlscale.errors import ConfigError

STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]

_BULLET_LINE_RE = re.compile(r"^[^\S\n]*[\u2022\-]", re.MULTILINE)
_ELLIPSIS_LINE_RE = re.compile(r"(?:\.\.\.|\u2026)[^\S\n]*$", re.MULTILINE)


@dataclass
class GopherQualityConfig:
    """Gopher's document quality heuristics (None switches a rule off)."""

    enabled: bool = option(True, "run the Gopher quality rules")
    min_words: int | None = option(50, "minimum non-symbol words", min=0)
    max_words: int | None = option(100_000, "maximum non-symbol words", min=0)
    min_mean_word_length: float | None = option(3.0, "minimum mean word length (characters)", min=0)
    max_mean_word_length: float | None = option(10.0, "maximum mean word length (characters)", min=0)
    max_hash_ratio: float | None = option(0.1, "maximum '#' per word", min=0)
    max_ellipsis_ratio: float | None = option(0.1, "maximum ellipses per word", min=0)
    max_bullet_lines: float | None = option(0.9, "maximum fraction of lines starting with a bullet",
                                            min=0, max=1)
    max_ellipsis_lines: float | None = option(0.3, "maximum fraction of lines ending in an ellipsis",
                                              min=0, max=1)
    min_alpha_words: float | None = option(0.8, "minimum fraction of words with a letter", min=0, max=1)
    min_stop_words: int | None = option(2, "minimum distinct stop words present", min=0)
    stop_words: list[str] = option(STOP_WORDS, "the stop words (matched case-sensitively, as datatrove)")

    def validate(self) -> None:
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ConfigError("quality.gopher_quality.min_words is above max_words")
        lo, hi = self.min_mean_word_length, self.max_mean_word_length
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError("quality.gopher_quality.min_mean_word_length is above max_mean_word_length")


class GopherQualityFilter(Filter):
    """Drop documents that fail one of Gopher's quality heuristics."""

    name = "gopher_quality"

    def __init__(self, cfg: GopherQualityConfig | None = None):
        self.cfg = cfg or GopherQualityConfig()
        self._stop_words = frozenset(self.cfg.stop_words)

    def check(self, doc: Document) -> str | None:
        c = self.cfg
        text = doc.text
        tokens = split_words(text)
        n_tokens = len(tokens)
        words = list(filter(WORD_START_RE.match, tokens))  # the non-symbol words
        n_words = len(words)
        if n_words == 0 or (c.min_words is not None and n_words < c.min_words):
            return "gopher_quality:too_few_words"
        if c.max_words is not None and n_words > c.max_words:
            return "gopher_quality:too_many_words"

        mean_len = sum(map(len, words)) / n_words
        if c.min_mean_word_length is not None and mean_len < c.min_mean_word_length:
            return "gopher_quality:short_words"
        if c.max_mean_word_length is not None and mean_len > c.max_mean_word_length:
            return "gopher_quality:long_words"

        if c.max_hash_ratio is not None and text.count("#") / n_tokens > c.max_hash_ratio:
            return "gopher_quality:hash_ratio"
        if (c.max_ellipsis_ratio is not None
                and (text.count("...") + text.count("\u2026")) / n_tokens > c.max_ellipsis_ratio):
            return "gopher_quality:ellipsis_ratio"

        lines = text.splitlines()
        if lines and (c.max_bullet_lines is not None or c.max_ellipsis_lines is not None):
            # one "\n" between lines, so ^ and $ see exactly the lines splitlines() found
            flat = "\n".join(lines)
            if (c.max_bullet_lines is not None
                    and len(_BULLET_LINE_RE.findall(flat)) / len(lines) > c.max_bullet_lines):
                return "gopher_quality:bullet_lines"
            if (c.max_ellipsis_lines is not None
                    and len(_ELLIPSIS_LINE_RE.findall(flat)) / len(lines) > c.max_ellipsis_lines):
                return "gopher_quality:ellipsis_lines"

        if (c.min_alpha_words is not None
                and count_alpha_tokens(words) / n_tokens < c.min_alpha_words):
            return "gopher_quality:alpha_words"

        if c.min_stop_words is not None and len(self._stop_words.intersection(words)) < c.min_stop_words:
            return "gopher_quality:stop_words"
        return None
