"""Word, sentence and paragraph splitting shared by the quality filters.

The filters follow datatrove's published rules, which split words with spaCy. spaCy
costs ~2 s to load and dominates datatrove's run time, so here one compiled regular
expression does the work, and a document is split once per filter, in C.

`split_words` returns spaCy-like tokens: words (letters, digits and underscores, with an
inner apostrophe or dot kept: "don't", "3.14", "os.path"; hyphens split, "e", "-", "mail")
and every other non-space character as a token of its own, except that runs of dots or
dashes ("...", "--") stay whole. Combining marks stay inside their word, so Devanagari
or vowel-pointed Arabic are not cut into pieces. Languages written without
spaces (Chinese, Japanese, Thai) come out as long runs: the Gopher word rules are
defined for space-separated languages.
"""
from __future__ import annotations

import re
import unicodedata


def _expand_class(spec: str) -> frozenset[str]:
    """The characters of a regex-style class body such as "a-c.!" (no escapes)."""
    chars: set[str] = set()
    i = 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            chars.update(chr(c) for c in range(ord(spec[i]), ord(spec[i + 2]) + 1))
            i += 3
        else:
            chars.add(spec[i])
            i += 1
    return frozenset(chars)


# Unicode's Sentence_Terminal property (STerm, Unicode 16): the marks that end a
# sentence in any script. FineWeb's "line ends in terminal punctuation" uses this set.
_STERM_CLASS = (
    "!.?\u0589\u061d-\u061f\u06d4\u0700-\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965"
    "\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u1803\u1809\u1944\u1945"
    "\u1aa8-\u1aab\u1b4e\u1b4f\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d-\u1b7f\u1c3b\u1c3c\u1c7e\u1c7f"
    "\u2024\u203c\u203d\u2047-\u2049\u2cf9-\u2cfb\u2e2e\u2e3c\u2e53\u2e54\u2e60\u2e61\u3002"
    "\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d-\uaa5f"
    "\uaaf0\uaaf1\uabeb\ufe12\ufe15\ufe16\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61"
    "\U00010a56\U00010a57\U00010f55-\U00010f59\U00010f86-\U00010f89\U00011047\U00011048"
    "\U000110be-\U000110c1\U00011141-\U00011143\U000111c5\U000111c6\U000111cd\U000111de"
    "\U000111df\U00011238\U00011239\U0001123b\U0001123c\U000112a9\U000113d4\U000113d5"
    "\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9-\U000115d7\U00011641\U00011642"
    "\U0001173c-\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b\U00011a9c"
    "\U00011c41\U00011c42\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f"
    "\U00016af5\U00016b37\U00016b38\U00016b44\U00016d6e\U00016d6f\U00016e98\U0001bc9f"
    "\U0001da88"
)
TERMINAL_PUNCTUATION: frozenset[str] = _expand_class(_STERM_CLASS)
#: The same set as a tuple, ready for `str.endswith`.
TERMINAL_PUNCTUATION_TUPLE: tuple[str, ...] = tuple(sorted(TERMINAL_PUNCTUATION))


def _mark_ranges() -> str:
    """A regex class body of the combining marks (Mn/Mc/Me) of the BMP, plus ZWNJ/ZWJ."""
    marks = [c for c in range(0x10000) if unicodedata.category(chr(c))[0] == "M"]
    marks += [0x200C, 0x200D]
    marks.sort()
    parts, i = [], 0
    while i < len(marks):
        j = i
        while j + 1 < len(marks) and marks[j + 1] == marks[j] + 1:
            j += 1
        parts.append(f"\\u{marks[i]:04x}" if i == j else f"\\u{marks[i]:04x}-\\u{marks[j]:04x}")
        i = j + 1
    return "".join(parts)


_MARKS = _mark_ranges()
_WORD_CHAR = rf"[\w{_MARKS}]"
# A word: letters/digits/marks, optionally joined by one apostrophe or dot ("don't",
# "3.14", "os.path"); hyphens split words, as in spaCy ("built", "-", "in").
# A period after a capital stays attached ("H.", "U.S.", "Ph.D."), as spaCy keeps it.
_WORD = rf"{_WORD_CHAR}+(?:['\u2019.]{_WORD_CHAR}+)*(?:(?<=[A-Z\u00c0-\u00d6\u00d8-\u00de])\.)?"
# Anything else that is not space is a symbol token of one character, except runs of
# dots or dashes ("...", "--"), which spaCy also keeps whole.
_SYMBOLS = rf"\.{{2,}}|-{{2,}}|[^\w\s{_MARKS}]"
TOKEN_RE = re.compile(rf"{_WORD}|{_SYMBOLS}")
# The word tokens alone: the same words TOKEN_RE finds, since symbol runs hold no word char.
WORD_RE = re.compile(_WORD)
_HAS_ALPHA = re.compile(r"[^\W\d_]")

PARAGRAPH_SPLIT_RE = re.compile(r"\n{2,}")
LINE_SPLIT_RE = re.compile(r"\n+")

_CLOSERS = "\"'\u2019\u201d\u00bb)\\]"
# A sentence ends at a run of terminal marks (plus closing quotes or brackets) before
# white space or the end of the text; CJK full stops end one even without a space.
_SENTENCE_END_RE = re.compile(
    rf"[{_STERM_CLASS}]+[{_CLOSERS}]*(?=\s|$)|[\u3002\uff01\uff1f\uff61]+[{_CLOSERS}]*"
)
# A period after these does not end a sentence ("Dr. Smith", "e.g. this").
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs e.g i.e cf fig no inc ltd co approx dept est".split()
)


def split_words(text: str) -> list[str]:
    """Word and punctuation tokens of `text`, in order (see the module docstring)."""
    return TOKEN_RE.findall(text)


# `filter(WORD_START_RE.match, tokens)` keeps the word tokens, looping in C.
WORD_START_RE = re.compile(_WORD_CHAR)


def is_word_token(token: str) -> bool:
    """True for a word token of `split_words` (not punctuation or a symbol)."""
    return WORD_START_RE.match(token) is not None


def count_alpha_tokens(tokens: list[str]) -> int:
    """How many tokens contain a letter (the loop runs in C through `filter`)."""
    return sum(1 for _ in filter(_HAS_ALPHA.search, tokens))


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs: the stripped text split at runs of two or more newlines."""
    return PARAGRAPH_SPLIT_RE.split(text.strip())


def split_lines_nonempty(text: str) -> list[str]:
    """Lines: the text split at runs of newlines, so no empty line between two others
    (a leading or trailing newline still gives one empty first or last element)."""
    return LINE_SPLIT_RE.split(text)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, stripped, empty ones dropped.

    A sentence ends at terminal punctuation followed by white space (or a CJK full
    stop); a period after an initial ("J. Smith") or a common abbreviation does not end
    one. Text without terminal punctuation is one sentence.
    """
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END_RE.finditer(text):
        if text[m.start()] == "." and m.end() - m.start() == 1:
            cut = max(text.rfind(" ", start, m.start()), text.rfind("\n", start, m.start()))
            word = text[max(cut + 1, start):m.start()].lower()
            if (len(word) == 1 and word.isalpha()) or word in _ABBREVIATIONS:
                continue
        piece = text[start:m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out
