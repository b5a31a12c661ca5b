"""Text normalisation for deduplication, as FineWeb's `simplify_text`, in one numba pass.

The normal form of a text, the one exact and near-duplicate detection both hash:

* case folded (`str.casefold`, so `ß` -> `ss` and the final sigma matches `σ`);
* diacritics removed (canonical decomposition, nonspacing marks dropped: `é` -> `e`);
* numbers normalised: a run of decimal digits in any script, with at most one decimal
  part after `. , ، ٫ ⎖ ⎗ ⎘`, becomes `0` (`3.14` -> `0`, `x86` -> `x0`);
* everything that is not a letter, mark or number (punctuation, symbols, control and
  separator characters in any script) is a word break; words are joined by one space,
  with none at either end.

A Python loop over characters would be the bottleneck of the whole dedup step, so the
rules are compiled once per process into per-code-point tables (class and folded UTF-8
bytes) for the Basic and Supplementary Multilingual Planes, and a numba kernel applies
them to the UTF-8 bytes of a whole batch. Code points above U+1FFFF (CJK extensions,
which have no case or decomposition) are kept as they are, except tags and variation
selectors (U+E0000..U+E0FFF, dropped) and private-use planes 15-16 (word breaks).
"""
from __future__ import annotations

import functools
import unicodedata
from typing import NamedTuple, Sequence

import numba
import numpy as np

# Character classes of the lookup table.
SEP = 0  # word break
WORD = 1  # part of a word: emit its folded bytes
DIGIT = 2  # decimal digit: a run of them (with one decimal part) becomes "0"
DROP = 3  # nonspacing mark: removed without breaking the word

TABLE_SIZE = 0x20000
DECIMAL_SEPARATORS = (0x2E, 0x2C, 0x060C, 0x066B, 0x2396, 0x2397, 0x2398)


class FoldTables(NamedTuple):
    """Per-code-point rules: class, and the folded UTF-8 bytes of WORD code points."""

    cls: np.ndarray  # (TABLE_SIZE,) uint8
    start: np.ndarray  # (TABLE_SIZE,) int32: offset of the folded bytes in `pool`
    length: np.ndarray  # (TABLE_SIZE,) uint8: number of folded bytes
    pool: np.ndarray  # uint8: all folded bytes
    max_growth: int  # most output bytes any one input byte can become


def _fold(ch: str) -> str:
    decomposed = unicodedata.normalize("NFD", ch.casefold())
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


@functools.cache
def fold_tables() -> FoldTables:
    """Build the lookup tables (about 0.2 s, once per process)."""
    cls = np.zeros(TABLE_SIZE, dtype=np.uint8)
    start = np.zeros(TABLE_SIZE, dtype=np.int32)
    length = np.zeros(TABLE_SIZE, dtype=np.uint8)
    pool = bytearray()
    growth = 1
    category = unicodedata.category
    for cp in range(TABLE_SIZE):
        ch = chr(cp)
        cat = category(ch)
        major = cat[0]
        if cat == "Nd":
            cls[cp] = DIGIT
        elif cat == "Mn":
            cls[cp] = DROP
        elif major in "LMN" or cat == "Cn":  # unassigned: a newer letter more likely than not
            folded = ch if cat == "Cn" else _fold(ch)
            if not folded:
                cls[cp] = DROP
                continue
            data = folded.encode("utf-8", "surrogatepass")
            cls[cp] = WORD
            start[cp] = len(pool)
            length[cp] = len(data)
            pool += data
            n_in = len(ch.encode("utf-8", "surrogatepass"))
            growth = max(growth, -(-len(data) // n_in))
        # P*, S*, Z*, Cc, Cf, Cs, Co: word breaks (class 0)
    return FoldTables(cls, start, length, np.frombuffer(bytes(pool), dtype=np.uint8),
                      growth)


@numba.njit(cache=True, inline="always")
def _decode(buf: np.ndarray, i: int, end: int) -> tuple[int, int]:
    """The code point starting at byte `i` and the index after it (input is valid UTF-8)."""
    b0 = np.int64(buf[i])
    if b0 < 0x80:
        return b0, i + 1
    if b0 < 0xE0 and i + 1 < end:
        return ((b0 & 0x1F) << 6) | (np.int64(buf[i + 1]) & 0x3F), i + 2
    if b0 < 0xF0 and i + 2 < end:
        return (((b0 & 0x0F) << 12) | ((np.int64(buf[i + 1]) & 0x3F) << 6)
                | (np.int64(buf[i + 2]) & 0x3F)), i + 3
    if i + 3 < end:
        return (((b0 & 0x07) << 18) | ((np.int64(buf[i + 1]) & 0x3F) << 12)
                | ((np.int64(buf[i + 2]) & 0x3F) << 6) | (np.int64(buf[i + 3]) & 0x3F)), i + 4
    return 0x20, end  # truncated sequence: treat as a word break


@numba.njit(cache=True, inline="always")
def _class(cp: int, cls: np.ndarray) -> int:
    if cp < 0x20000:
        return np.int64(cls[cp])
    if 0xE0000 <= cp < 0xE1000:
        return 3  # DROP
    if cp >= 0xF0000:
        return 0  # SEP
    return 1  # WORD, kept as is


@numba.njit(cache=True, inline="always")
def _is_decimal_separator(cp: int) -> bool:
    return (cp == 0x2E or cp == 0x2C or cp == 0x060C or cp == 0x066B
            or (0x2396 <= cp <= 0x2398))


@numba.njit(cache=True)
def _skip_drops(buf, i, end, cls) -> int:
    """Index of the first code point at or after `i` that is not a nonspacing mark."""
    while i < end:
        cp, nxt = _decode(buf, i, end)
        if _class(cp, cls) != 3:
            return i
        i = nxt
    return end


@numba.njit(cache=True)
def _skip_digits(buf, i, end, cls) -> int:
    """Index after the run of digits (and nonspacing marks) starting at `i`."""
    while i < end:
        j = _skip_drops(buf, i, end, cls)
        if j >= end:
            return j
        cp, nxt = _decode(buf, j, end)
        if _class(cp, cls) != 2:
            return i
        i = nxt
    return i


@numba.njit(cache=True)
def _normalize_kernel(buf, offsets, cls, fstart, flen, pool, out, out_offsets):
    """Write the normal form of each document `buf[offsets[d]:offsets[d+1]]` into `out`."""
    o = 0
    n_docs = offsets.shape[0] - 1
    for d in range(n_docs):
        out_offsets[d] = o
        i = offsets[d]
        end = offsets[d + 1]
        pending_space = False
        any_word = False
        while i < end:
            b = buf[i]
            if b < 128 and cls[b] == 1:  # fast path: an ASCII letter, folded to one byte
                if pending_space:
                    out[o] = 32
                    o += 1
                    pending_space = False
                any_word = True
                out[o] = pool[fstart[b]]
                o += 1
                i += 1
                continue
            if b < 128 and cls[b] == 0:  # fast path: ASCII space or punctuation
                pending_space = any_word
                i += 1
                continue
            cp, nxt = _decode(buf, i, end)
            c = _class(cp, cls)
            if c == 0:
                pending_space = any_word
                i = nxt
                continue
            if c == 3:
                i = nxt
                continue
            if pending_space:
                out[o] = 32
                o += 1
                pending_space = False
            any_word = True
            if c == 2:
                # A number: digits (nonspacing marks between them are dropped, as
                # everywhere), then at most one decimal separator and more digits.
                i = _skip_digits(buf, nxt, end, cls)
                j = _skip_drops(buf, i, end, cls)
                if j < end:
                    cp2, nxt2 = _decode(buf, j, end)
                    if _is_decimal_separator(cp2):
                        k = _skip_drops(buf, nxt2, end, cls)
                        if k < end:
                            cp3, nxt3 = _decode(buf, k, end)
                            if _class(cp3, cls) == 2:
                                i = _skip_digits(buf, nxt3, end, cls)
                out[o] = 48  # "0"
                o += 1
                continue
            if cp < 0x20000:
                s = fstart[cp]
                for k in range(flen[cp]):
                    out[o] = pool[s + k]
                    o += 1
            else:
                for k in range(i, nxt):
                    out[o] = buf[k]
                    o += 1
            i = nxt
    out_offsets[n_docs] = o


def encode_batch(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of all texts concatenated, and (n+1,) int64 offsets of each text."""
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    if encoded:
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)),
                  out=offsets[1:])
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return buf, offsets


def normalize_batch(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Normal forms of a batch as UTF-8 bytes with (n+1,) int64 offsets (see module doc)."""
    buf, offsets = encode_batch(texts)
    return normalize_bytes(buf, offsets)


def normalize_bytes(buf: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`normalize_batch` on already encoded UTF-8 bytes and offsets."""
    t = fold_tables()
    out = np.empty(max(int(buf.shape[0]) * t.max_growth, 1), dtype=np.uint8)
    out_offsets = np.empty_like(offsets)
    _normalize_kernel(buf, offsets, t.cls, t.start, t.length, t.pool, out, out_offsets)
    return out[: out_offsets[-1]], out_offsets


def normalize_text(text: str) -> str:
    """The normal form of one text: case folded, no punctuation or diacritics, digits as 0."""
    out, offsets = normalize_batch([text])
    return out[offsets[0]: offsets[1]].tobytes().decode("utf-8", "surrogatepass")
