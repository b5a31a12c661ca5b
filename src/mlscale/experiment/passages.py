"""Plain text to documents: cut a long text (a play, a book) into passages.

A whole text would be one document, and documents go to train or val by a hash of their
id: a single book would land entirely in one split. Cut at blank lines into passages of
about `passage_chars` characters, each with its own id, the text is shared out between
the splits like any corpus. The passages join to exactly the original text.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from mlscale.artifacts import atomic_path
from mlscale.errors import InputError


def read_text(path: Path) -> str:
    """A .txt or .txt.gz file as text (newlines exactly as stored)."""
    try:
        raw = gzip.open(path, "rb").read() if path.name.endswith(".gz") else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not readable as UTF-8 text ({e})") from None


def passages(text: str, target_chars: int) -> Iterator[str]:
    """Consecutive pieces of `text` of about `target_chars`, cut just after blank lines."""
    start = 0
    while start < len(text):
        cut = text.find("\n\n", start + target_chars)
        end = len(text) if cut < 0 else cut + 2
        yield text[start:end]
        start = end


def write_passages(src: Path, dest: Path, target_chars: int) -> int:
    """Write `src` as JSONL passages (`id`, `text`) to `dest` (gzip, byte-stable); count them."""
    text = read_text(src)
    if not text.strip():
        raise InputError(f"{src}: the file holds no text")
    stem = src.name.removesuffix(".gz")
    lines = [json.dumps({"id": f"{stem}#{i}", "text": p}, ensure_ascii=False)
             for i, p in enumerate(passages(text, target_chars))]
    with atomic_path(dest) as tmp:
        # mtime 0 and no file name: the same text gives the same bytes, so the next stage's
        # input fingerprint only changes when the text does
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(("\n".join(lines) + "\n").encode("utf-8"))
    return len(lines)
