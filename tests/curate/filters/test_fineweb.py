"""FineWeb rules, each at its boundary."""
from __future__ import annotations

from filter_helpers import prose, verdict

from mlscale.curate.filters.fineweb import FineWebConfig, FineWebFilter


def fw(**cfg) -> FineWebFilter:
    return FineWebFilter(FineWebConfig(**cfg))


def lines(n: int, punct: int, words: int = 8, short: int = 0) -> str:
    """`n` distinct lines of `words` words; the first `punct` end in '.', `short` are short."""
    out = []
    for i in range(n):
        line = f"line {i} " + (prose(3, i) if i < short else prose(words, i))
        out.append(line + ("." if i < punct else ""))
    return "\n".join(out)


def test_lines_ending_in_terminal_punctuation():
    assert verdict(fw(), lines(100, 12)) is None
    assert verdict(fw(), lines(100, 11)) == "fineweb:line_punct_ratio"
    assert verdict(fw(line_punct_exclude_zero=True), lines(100, 0)) is None
    assert verdict(fw(), lines(100, 0).replace("line 5 ", "line 5 \u3002 ")) == "fineweb:line_punct_ratio"
    assert verdict(fw(), "\n".join(f"{prose(8, i)} {i}\u3002" for i in range(10))) is None  # CJK stop


def test_short_lines():
    assert verdict(fw(), lines(100, 100, short=67)) is None
    assert verdict(fw(), lines(100, 100, short=68)) == "fineweb:short_line_ratio"
    assert verdict(fw(max_short_line_ratio=None), lines(100, 100, short=68)) is None


def test_duplicated_line_characters():
    text = lines(40, 40) + "\n" + "line 0 " + prose(8, 0) + "."
    dup_share = len("line 0 " + prose(8, 0) + ".") / (len(text) - text.count("\n"))
    assert verdict(fw(max_char_dup_ratio=dup_share), text) is None
    assert verdict(fw(max_char_dup_ratio=dup_share - 1e-9), text) == "fineweb:char_dup_ratio"
    assert verdict(fw(), text) == "fineweb:char_dup_ratio"  # ~2.5% > 1%


def test_newlines_per_word():
    # each line: "line", "<i>", 2 more words, "." -> 5 tokens; 9 newlines / 50 tokens
    ok = "\n".join(f"line {i} {prose(2, i)}." for i in range(10))
    assert verdict(fw(max_short_line_ratio=None, max_newline_word_ratio=9 / 50), ok) is None
    assert verdict(fw(max_short_line_ratio=None, max_newline_word_ratio=9 / 50 - 1e-9), ok) == \
        "fineweb:list_ratio"


def test_empty_documents():
    assert verdict(fw(), "\n \n\t\n") == "fineweb:empty"
