"""Real text corpora for the dedup benchmark: documents, perturbed copies, short documents.

Sources, in order (all real text nobody on this project wrote):
  1. Debian's python3.11-doc: /usr/share/doc/python3.11/html (HTML pages, text extracted
     with resiliparse) and its reStructuredText sources (_sources/*.rst.txt);
  2. Debian's linux-doc: /usr/share/doc/linux-doc/Documentation/**/*.gz (kernel docs,
     with natural near-duplicates between versions and subsystems);
  3. ../shared/data: CCNet web documents, the Python docs and Debian Reference WARCs,
     and tiny Shakespeare cut into scenes.

Install 1 and 2 with:  apt-get update && apt-get install -y python3.11-doc linux-doc
Without them the corpus falls back to ../shared/data, which gives far fewer than 10,000
documents (the script says so).
"""
from __future__ import annotations

import gzip
import json
import re
import sys
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
PYTHON_DOC = Path("/usr/share/doc/python3.11/html")
LINUX_DOC = Path("/usr/share/doc/linux-doc/Documentation")
INSTALL_HINT = "apt-get update && apt-get install -y python3.11-doc linux-doc"
MIN_WORDS = 20


@dataclass
class Corpus:
    """Texts, and for each the index of the document it is a perturbed copy of (-1: none)."""

    texts: list[str]
    sources: list[str]
    copy_of: np.ndarray
    edit_rate: np.ndarray


def _html_text(html: bytes) -> str:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    return extract_plain_text(HTMLTree.parse_from_bytes(html, "utf-8"), main_content=True)


def _warc_pages(path: Path) -> Iterator[tuple[str, str]]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    with path.open("rb") as fh:
        for record in ArchiveIterator(fh, record_types=WarcRecordType.response):
            url = record.headers.get("WARC-Target-URI", "")
            yield url, _html_text(record.reader.read())


def real_documents(verbose: bool = True) -> list[tuple[str, str]]:
    """(source, text) of every real document found, at least MIN_WORDS words each."""
    docs: list[tuple[str, str]] = []
    if PYTHON_DOC.is_dir():
        for path in sorted(PYTHON_DOC.rglob("*.html")):
            docs.append((f"python-doc:{path.relative_to(PYTHON_DOC)}",
                         _html_text(path.read_bytes())))
        for path in sorted((PYTHON_DOC / "_sources").rglob("*.txt")):
            docs.append((f"python-doc:{path.relative_to(PYTHON_DOC)}",
                         path.read_text(errors="replace")))
    if LINUX_DOC.is_dir():
        for path in sorted(LINUX_DOC.rglob("*.gz")):
            with gzip.open(path, "rt", errors="replace") as fh:
                docs.append((f"linux-doc:{path.relative_to(LINUX_DOC)}", fh.read()))
    if verbose and not (PYTHON_DOC.is_dir() and LINUX_DOC.is_dir()):
        print(f"note: Debian documentation packages missing; for a >= 10,000 document "
              f"corpus run: {INSTALL_HINT}", file=sys.stderr)
    for path in sorted((SHARED / "commoncrawl").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            docs.append((f"ccnet:{record.get('id', '')}", record["text"]))
    for name in ("python-3.11-docs.warc.gz", "debian-reference.warc.gz"):
        path = SHARED / "web" / name
        if path.is_file():
            docs.extend((f"warc:{url}", text) for url, text in _warc_pages(path))
    shakespeare = SHARED / "tinyshakespeare" / "input.txt"
    if shakespeare.is_file():
        # Cut into pieces of 60 lines (a few speeches each).
        lines = shakespeare.read_text().splitlines()
        for start in range(0, len(lines), 60):
            docs.append((f"shakespeare:{start}", "\n".join(lines[start: start + 60])))
    return [(s, t) for s, t in docs if len(t.split()) >= MIN_WORDS]


def perturb(text: str, rate: float, rng: np.random.Generator) -> str:
    """A copy with round(rate * words) random word edits: replace, delete or insert."""
    words = text.split()
    vocabulary = words or ["word"]
    for _ in range(int(round(rate * len(words)))):
        op = rng.integers(3)
        k = int(rng.integers(max(len(words), 1)))
        filler = vocabulary[int(rng.integers(len(vocabulary)))]
        if op == 0 and words:
            words[k] = filler + "x"
        elif op == 1 and len(words) > 1:
            del words[k]
        else:
            words.insert(k, filler + "y")
    return " ".join(words)


def build_corpus(copies: int = 2500, rates: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.15,
                                                                   0.2, 0.25),
                 seed: int = 0, max_chars: int = 200_000) -> Corpus:
    """Real documents plus `copies` perturbed copies of random ones at the given edit rates.

    Documents longer than `max_chars` are cut there (a handful of huge reference pages
    would otherwise dominate every timing).
    """
    docs = real_documents()
    rng = np.random.default_rng(seed)
    texts = [t[:max_chars] for _, t in docs]
    sources = [s for s, _ in docs]
    n_real = len(texts)
    copy_of = np.full(n_real + copies, -1, dtype=np.int64)
    edit_rate = np.zeros(n_real + copies)
    for c in range(copies):
        original = int(rng.integers(n_real))
        rate = rates[c % len(rates)]
        texts.append(perturb(texts[original], rate, rng))
        sources.append(f"copy:{original}:{rate}")
        copy_of[n_real + c] = original
        edit_rate[n_real + c] = rate
    # Interleave copies with originals, as they would be in a crawl.
    order = rng.permutation(len(texts))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    copy_of = np.where(copy_of[order] >= 0, inverse[np.maximum(copy_of[order], 0)], -1)
    return Corpus([texts[i] for i in order], [sources[i] for i in order], copy_of,
                  edit_rate[order])


_LINE = re.compile(r"\S+(?:\s+\S+){4,}")  # lines of five or more words


def line_pool(texts: list[str], max_lines: int = 2_000_000) -> list[str]:
    """Distinct real lines of at least five words, for building short documents."""
    seen: dict[str, None] = {}
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if _LINE.fullmatch(line) and line not in seen:
                seen[line] = None
                if len(seen) >= max_lines:
                    return list(seen)
    return list(seen)


def _picks(first: int, count: int, per_doc: int, pool_size: int, seed: int) -> np.ndarray:
    """(count, per_doc) line indices of documents first..first+count-1: a pure function
    of (seed, document, slot) via the splitmix64 finaliser, so any document can be
    regenerated without storing anything."""
    x = (np.arange(first * per_doc, (first + count) * per_doc, dtype=np.uint64)
         + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(pool_size)).astype(np.int64).reshape(count, per_doc)


def short_documents(n: int, pool: list[str], seed: int = 0, size: int = 1000,
                    dup_every: int = 20, rate: float = 0.01, block: int = 4096) -> Iterator[str]:
    """`n` documents of ~`size` characters, each a run of random real lines.

    Every `dup_every`-th document is a perturbed copy (edit `rate`) of an earlier one,
    regenerated from its index, so the stream needs O(1) memory at any n.
    """
    mean = sum(len(line) + 1 for line in pool[:100_000]) / min(len(pool), 100_000)
    per_doc = max(2, int(round(size / mean)))  # itemgetter of one index returns no tuple
    for first in range(0, n, block):
        count = min(block, n - first)
        picks = _picks(first, count, per_doc, len(pool), seed).tolist()
        for k in range(count):
            i = first + k
            if dup_every and i % dup_every == dup_every - 1:
                rng = np.random.default_rng((seed, i))
                original = int(rng.integers(i))
                line_ids = _picks(original, 1, per_doc, len(pool), seed)[0]
                yield perturb("\n".join(itemgetter(*line_ids.tolist())(pool)), rate, rng)
            else:
                yield "\n".join(itemgetter(*picks[k])(pool))
