"""Gopher quality rules: each threshold at its boundary, and a plain reference on real text."""
from __future__ import annotations

import pytest
from filter_helpers import prose, verdict

from mlscale.curate.filters.gopher_quality import GopherQualityConfig, GopherQualityFilter
from mlscale.curate.text import split_words
from mlscale.errors import ConfigError


def gq(**cfg) -> GopherQualityFilter:
    return GopherQualityFilter(GopherQualityConfig(**cfg))


def test_word_count_bounds():
    assert verdict(gq(), prose(50)) is None
    assert verdict(gq(), prose(49)) == "gopher_quality:too_few_words"
    assert verdict(gq(min_words=None), prose(49)) is None
    assert verdict(gq(max_words=60), prose(60)) is None
    assert verdict(gq(max_words=60), prose(61)) == "gopher_quality:too_many_words"
    # punctuation is not a word
    assert verdict(gq(), prose(49) + " , . ;") == "gopher_quality:too_few_words"
    assert verdict(gq(), "") == "gopher_quality:too_few_words"


def test_mean_word_length_bounds():
    assert verdict(gq(min_words=2), "the and " * 30) is None  # mean exactly 3
    assert verdict(gq(min_words=2), "the and of " * 30) == "gopher_quality:short_words"
    ten = "the and " + "a" * 24  # mean exactly 10
    assert verdict(gq(min_words=2), (ten + " ") * 20) is None
    assert verdict(gq(min_words=2), (ten + "a ") * 20) == "gopher_quality:long_words"
    assert verdict(gq(min_words=2, max_mean_word_length=None), (ten + "a ") * 20) is None


@pytest.mark.parametrize("symbol, reason", [("#", "hash_ratio"), ("...", "ellipsis_ratio"),
                                            ("\u2026", "ellipsis_ratio")])
def test_symbol_to_word_ratio(symbol, reason):
    def text(k: int) -> str:  # 90 words, k symbols inside the line (not at its end)
        words = prose(90).split()
        for i in range(k):
            words.insert(1 + i * 8, symbol)
        return " ".join(words)

    assert verdict(gq(), text(10)) is None  # 10 / 100 tokens
    assert verdict(gq(), text(11)) == f"gopher_quality:{reason}"  # 11 / 101


@pytest.mark.parametrize("bullet", ["-", "\u2022"])
def test_bullet_lines(bullet):
    lines = [prose(10, i) for i in range(10)]
    nine = "\n".join(f"  {bullet} {line}" if i < 9 else line for i, line in enumerate(lines))
    ten = "\n".join(f"{bullet} {line}" for line in lines)
    assert verdict(gq(), nine) is None
    assert verdict(gq(), ten) == "gopher_quality:bullet_lines"
    assert verdict(gq(max_bullet_lines=None), ten) is None


def test_lines_ending_in_an_ellipsis():
    lines = [prose(12, i) for i in range(10)]
    three = "\r\n".join(line + ("... " if i < 3 else "") for i, line in enumerate(lines))
    four = "\r\n".join(line + ("\u2026" if i < 4 else "") for i, line in enumerate(lines))
    assert verdict(gq(), three) is None
    assert verdict(gq(), four) == "gopher_quality:ellipsis_lines"


def test_words_with_a_letter():
    assert verdict(gq(), prose(80) + " 123" * 20) is None  # 80 / 100
    assert verdict(gq(), prose(80) + " 123" * 21) == "gopher_quality:alpha_words"
    assert verdict(gq(min_alpha_words=None), prose(80) + " 123" * 21) is None


def test_stop_words_are_distinct_and_case_sensitive():
    plain = " ".join(["garden river house morning light walked slowly"] * 10)
    assert verdict(gq(), plain + " the the the") == "gopher_quality:stop_words"
    assert verdict(gq(), plain + " The And") == "gopher_quality:stop_words"
    assert verdict(gq(), plain + " the and") is None
    assert verdict(gq(stop_words=["garden", "river"]), plain) is None


def test_config_validation():
    with pytest.raises(ConfigError, match="min_words is above max_words"):
        GopherQualityConfig(min_words=10, max_words=5).validate()


def reference(text: str, c: GopherQualityConfig) -> str | None:
    """The published rules written plainly, one Python loop per rule, on the same tokens."""
    tokens = split_words(text)
    words = [t for t in tokens if any(ch.isalnum() or ch == "_" for ch in t)]
    n = len(tokens)
    if len(words) < c.min_words:
        return "too_few_words"
    if len(words) > c.max_words:
        return "too_many_words"
    mean = sum(len(w) for w in words) / len(words)
    if mean < c.min_mean_word_length:
        return "short_words"
    if mean > c.max_mean_word_length:
        return "long_words"
    if text.count("#") / n > c.max_hash_ratio:
        return "hash_ratio"
    if (text.count("...") + text.count("\u2026")) / n > c.max_ellipsis_ratio:
        return "ellipsis_ratio"
    lines = text.splitlines()
    if sum(ln.lstrip().startswith(("\u2022", "-")) for ln in lines) / len(lines) > c.max_bullet_lines:
        return "bullet_lines"
    if sum(ln.rstrip().endswith(("...", "\u2026")) for ln in lines) / len(lines) > c.max_ellipsis_lines:
        return "ellipsis_lines"
    if sum(any(ch.isalpha() for ch in t) for t in tokens) / n < c.min_alpha_words:
        return "alpha_words"
    if len(set(c.stop_words) & set(tokens)) < c.min_stop_words:
        return "stop_words"
    return None


def test_matches_the_plain_reference_on_real_text(real_texts):
    cfg = GopherQualityConfig()
    f = GopherQualityFilter(cfg)
    reasons = []
    for text in real_texts:
        want = reference(text, cfg)
        got = verdict(f, text)
        assert got == (None if want is None else f"gopher_quality:{want}"), text[:200]
        reasons.append(got)
    assert reasons.count(None) >= 10 and len(set(reasons)) >= 3  # real text exercises several rules
