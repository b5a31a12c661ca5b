"""C4 cleaning rules (Raffel et al. 2020; datatrove's C4QualityFilter).

A document step: it removes bad lines, then may drop the whole document. Per line
(stripped; words split on white space):
- a word longer than `max_word_length` (1000) removes the line;
- Wikipedia-style citation marks ("[1]", "[edit]", "[citation needed]") are deleted;
- with `terminal_punct`, a line not ending in . ? ! " ' (or ending in "...") is removed.
  C4 does this; FineWeb turns it off, and so does the default here (shared/anchors.md);
- a line with fewer than `min_words_per_line` (3) words is removed;
- "lorem ipsum" anywhere in a kept line drops the document;
- a line mentioning "javascript" is removed;
- a "{" in a kept line drops the document;
- a line with a cookie / terms-of-use / privacy-policy phrase is removed.
Then a document with fewer than `min_sentences` (5) sentences in its kept lines is dropped.
The kept lines, joined by newlines, become the text; how many non-blank lines went is
recorded in `metadata["c4_removed_lines"]` when any did.

Reason codes of the `c4` step:
    c4:lorem_ipsum          placeholder text
    c4:curly_bracket        code or templates ("{")
    c4:too_few_sentences    fewer than `min_sentences` sentences left
    c4:no_lines             no line left (only reachable with min_sentences = 0)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from mlscale.config import option
from mlscale.curate.document import Document, Removal
from mlscale.curate.step import DocumentStep, Item
from mlscale.curate.text import split_sentences

CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_PHRASES = ["terms of use", "privacy policy", "cookie policy", "uses cookies",
                  "use of cookies", "use cookies"]


@dataclass
class C4Config:
    """C4's line and document rules."""

    enabled: bool = option(True, "run the C4 rules")
    remove_citations: bool = option(True, "delete citation marks such as [1] and [edit]")
    terminal_punct: bool = option(False, "remove lines not ending in terminal punctuation (C4: on, "
                                  "FineWeb: off)")
    min_words_per_line: int = option(3, "remove lines with fewer words (0: off)", min=0)
    max_word_length: int | None = option(1000, "remove lines with a longer word (None: off)", min=1)
    min_sentences: int = option(5, "drop documents with fewer sentences (0: off)", min=0)
    lorem_ipsum: bool = option(True, "drop documents containing 'lorem ipsum'")
    javascript: bool = option(True, "remove lines mentioning javascript")
    curly_bracket: bool = option(True, "drop documents containing '{'")
    policy: bool = option(True, "remove lines with cookie / terms / privacy-policy phrases")
    policy_phrases: list[str] = option(POLICY_PHRASES, "the phrases of the policy rule (lowercase)")


class C4Filter(DocumentStep):
    """Remove C4's bad lines, then drop the document if C4 would."""

    name = "c4"

    def __init__(self, cfg: C4Config | None = None):
        self.cfg = cfg or C4Config()
        self._policy = tuple(p.lower() for p in self.cfg.policy_phrases)

    def process(self, doc: Document) -> Item:
        c = self.cfg
        kept: list[str] = []
        sentences = 0
        lines = doc.text.splitlines()
        for line in lines:
            line = line.strip()
            words = line.split()
            if c.max_word_length is not None and words and max(map(len, words)) > c.max_word_length:
                continue
            if c.remove_citations and "[" in line:
                line = CITATION_RE.sub("", line)
            if c.terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
                continue
            if len(words) < c.min_words_per_line:
                continue
            lower = line.lower()
            if c.lorem_ipsum and "lorem ipsum" in lower:
                return Removal(doc.id, self.name, "c4:lorem_ipsum")
            if c.javascript and "javascript" in lower:
                continue
            if c.curly_bracket and "{" in line:
                return Removal(doc.id, self.name, "c4:curly_bracket")
            if c.policy and any(p in lower for p in self._policy):
                continue
            if c.min_sentences:
                sentences += len(split_sentences(line))
            kept.append(line)
        if sentences < c.min_sentences:
            return Removal(doc.id, self.name, "c4:too_few_sentences",
                           detail=f"{sentences} sentences")
        if not kept:
            return Removal(doc.id, self.name, "c4:no_lines")
        removed = sum(1 for line in lines if not line.isspace() and line) - len(kept)
        if removed:
            doc.metadata["c4_removed_lines"] = removed
        doc.text = "\n".join(kept).strip()
        return doc
