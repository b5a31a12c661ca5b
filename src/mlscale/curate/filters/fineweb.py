"""FineWeb's own quality rules (Penedo et al. 2024; datatrove's FineWebQualityFilter).

Lines are the non-blank lines of the text split at "\\n".

Reason codes of the `fineweb` step (thresholds from shared/anchors.md):
    fineweb:empty              no non-blank line
    fineweb:line_punct_ratio   lines ending in terminal punctuation < 0.12 of lines
    fineweb:short_line_ratio   lines of <= 30 characters > 0.67 of lines
    fineweb:char_dup_ratio     characters in duplicate lines > 0.01 of the text (newlines excluded)
    fineweb:list_ratio         newlines per word > 0.3
"""
from __future__ import annotations

from dataclasses import dataclass

from mlscale.config import option
from mlscale.curate.document import Document
from mlscale.curate.filters.gopher_repetition import duplicate_stats
from mlscale.curate.step import Filter
from mlscale.curate.text import TERMINAL_PUNCTUATION_TUPLE, split_words


@dataclass
class FineWebConfig:
    """FineWeb's extra rules (None switches a rule off)."""

    enabled: bool = option(True, "run the FineWeb rules")
    min_line_punct_ratio: float | None = option(0.12, "minimum fraction of lines ending in "
                                                "terminal punctuation", min=0, max=1)
    line_punct_exclude_zero: bool = option(False, "keep documents where no line ends in punctuation")
    max_short_line_ratio: float | None = option(0.67, "maximum fraction of short lines", min=0, max=1)
    short_line_length: int = option(30, "a line of at most this many characters is short", min=0)
    max_char_dup_ratio: float | None = option(0.01, "maximum character share of duplicate lines",
                                              min=0, max=1)
    max_newline_word_ratio: float | None = option(0.3, "maximum newlines per word", min=0)


class FineWebFilter(Filter):
    """Drop documents that fail one of FineWeb's line-level heuristics."""

    name = "fineweb"

    def __init__(self, cfg: FineWebConfig | None = None):
        self.cfg = cfg or FineWebConfig()

    def check(self, doc: Document) -> str | None:
        c = self.cfg
        text = doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return "fineweb:empty"
        n = len(lines)
        if c.min_line_punct_ratio is not None:
            ratio = sum(1 for line in lines if line.endswith(TERMINAL_PUNCTUATION_TUPLE)) / n
            if ratio < c.min_line_punct_ratio and not (ratio == 0 and c.line_punct_exclude_zero):
                return "fineweb:line_punct_ratio"
        if c.max_short_line_ratio is not None:
            ratio = sum(1 for line in lines if len(line) <= c.short_line_length) / n
            if ratio > c.max_short_line_ratio:
                return "fineweb:short_line_ratio"
        if c.max_char_dup_ratio is not None:
            chars = len(text) - text.count("\n")
            if duplicate_stats(lines)[1] / chars > c.max_char_dup_ratio:
                return "fineweb:char_dup_ratio"
        if c.max_newline_word_ratio is not None:
            words = len(split_words(text))
            if words == 0 or text.count("\n") / words > c.max_newline_word_ratio:
                return "fineweb:list_ratio"
        return None
