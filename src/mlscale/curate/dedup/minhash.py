"""MinHash signatures of word n-gram shingles, FineWeb-style, computed by a numba kernel.

For each document: its normal form (`normalize.py`) is split into words; every window of
`ngram` consecutive words is one shingle (a document with fewer words has one shingle of
all its words); each shingle gets a 64-bit hash (FNV-1a over each word's bytes, mixed,
then the word hashes chained in order through the splitmix64 finaliser); permutation j
maps a shingle hash h to (a_j * h + b_j) mod (2^61 - 1) and the signature keeps the
minimum over shingles. a_j in [1, p) and b_j in [0, p) come from `seed`.

Unlike datatrove and datasketch, which multiply in wrapping uint64 before the modulo, the
product here is exact: h is reduced mod p first and a*h is formed from 32-bit halves and
folded with 2^61 = 1 (mod p), so each permutation is a true member of the universal
family. Per document the loop over its shingles is innermost (a min-reduction per
permutation), which LLVM compiles to SIMD 32x32->64 multiplies.

A document whose normal form is empty gets the sentinel signature: every entry
`EMPTY_HASH` (2^64 - 1), a value no permutation can produce. `estimated_jaccard` scores
it 0 against anything, and `band_keys` puts it in no bucket, so it never matches.
"""
from __future__ import annotations

from typing import Sequence

import numba
import numpy as np

from mlscale.curate.dedup.config import NearConfig
from mlscale.curate.dedup.normalize import encode_batch, normalize_bytes

MERSENNE_61 = (1 << 61) - 1
EMPTY_HASH = np.uint64(0xFFFFFFFFFFFFFFFF)

_P = np.uint64(MERSENNE_61)
_M32 = np.uint64(0xFFFFFFFF)
_M29 = np.uint64((1 << 29) - 1)
_S3 = np.uint64(3)
_S29 = np.uint64(29)
_S32 = np.uint64(32)
_S61 = np.uint64(61)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_SHINGLE_SEED = np.uint64(0x9E3779B97F4A7C15)
_SPACE = np.uint8(32)


@numba.njit(cache=True, inline="always")
def mix64(x: np.uint64) -> np.uint64:
    """splitmix64's finaliser: a bijection of uint64 with full avalanche."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True)
def _word_hashes(buf, start, end, out) -> int:
    """64-bit hashes of the space-separated words of `buf[start:end]` into `out`; count."""
    n = 0
    i = start
    while i < end:
        h = _FNV_OFFSET
        while i < end and buf[i] != _SPACE:
            h = (h ^ np.uint64(buf[i])) * _FNV_PRIME
            i += 1
        i += 1  # the single space between words
        out[n] = mix64(h)
        n += 1
    return n


@numba.njit(cache=True)
def _shingle_hashes(words, nwords, ngram, out) -> int:
    """Hashes of every window of `ngram` words (one window of all words if fewer)."""
    width = min(ngram, nwords)
    m = nwords - width + 1 if nwords > 0 else 0
    for k in range(m):
        h = _SHINGLE_SEED
        for t in range(width):
            h = mix64(h ^ words[k + t])
        out[k] = h
    return m


@numba.njit(cache=True, inline="always")
def _mulmod(ah, al, bj, x_hi, x_lo):
    """(a * x + b) mod p for a = ah * 2^32 + al and x = x_hi * 2^32 + x_lo, both < p."""
    hh = (ah * x_hi) << _S3  # 2^64 = 8 (mod p); < 2^61
    mid = ah * x_lo + al * x_hi  # < 2^62
    mid = (mid >> _S29) + ((mid & _M29) << _S32)  # mid * 2^32 (mod p), < 2^62
    ll = al * x_lo  # exact in 64 bits
    ll = (ll & _P) + (ll >> _S61)
    s = hh + mid + ll + bj  # < 2^63 + 2^34
    s = (s & _P) + (s >> _S61)  # < 2^61 + 4
    if s >= _P:
        s -= _P
    return s


@numba.njit(cache=True)
def _permute_min(shingles, m, x_hi, x_lo, a_hi, a_lo, b, sig) -> None:
    """sig[j] = min over shingles h of (a_j * h + b_j) mod p, computed exactly.

    h is reduced mod p and split into 29 + 32 bits; a_j * h is assembled from four
    32x32->64 products, folding 2^61 = 1 (mod p). The loop over shingles is innermost
    (two permutations per pass, to reuse each loaded shingle) so LLVM vectorises it as
    min-reductions.
    """
    for k in range(m):
        h = shingles[k]
        x = (h & _P) + (h >> _S61)
        if x >= _P:
            x -= _P
        x_hi[k] = x >> _S32
        x_lo[k] = x & _M32
    num_perm = sig.shape[0]
    for j in range(0, num_perm - 1, 2):
        ah0, al0, b0 = a_hi[j] & _M29, a_lo[j] & _M32, b[j]
        ah1, al1, b1 = a_hi[j + 1] & _M29, a_lo[j + 1] & _M32, b[j + 1]
        best0 = _P
        best1 = _P
        for k in range(m):
            xh = x_hi[k] & _M29
            xl = x_lo[k] & _M32
            best0 = min(best0, _mulmod(ah0, al0, b0, xh, xl))
            best1 = min(best1, _mulmod(ah1, al1, b1, xh, xl))
        sig[j] = best0
        sig[j + 1] = best1
    if num_perm % 2:
        j = num_perm - 1
        ah0, al0, b0 = a_hi[j] & _M29, a_lo[j] & _M32, b[j]
        best0 = _P
        for k in range(m):
            best0 = min(best0, _mulmod(ah0, al0, b0, x_hi[k] & _M29, x_lo[k] & _M32))
        sig[j] = best0


@numba.njit(cache=True)
def _signature_kernel(buf, offsets, ngram, a_hi, a_lo, b, sigs):
    """Signatures of normal-form documents `buf[offsets[d]:offsets[d+1]]` into `sigs`."""
    n_docs = offsets.shape[0] - 1
    longest = 0
    for d in range(n_docs):
        longest = max(longest, offsets[d + 1] - offsets[d])
    words = np.empty(longest // 2 + 2, dtype=np.uint64)
    shingles = np.empty(longest // 2 + 2, dtype=np.uint64)
    x_hi = np.empty(longest // 2 + 2, dtype=np.uint64)
    x_lo = np.empty(longest // 2 + 2, dtype=np.uint64)
    for d in range(n_docs):
        nwords = _word_hashes(buf, offsets[d], offsets[d + 1], words)
        if nwords == 0:
            for j in range(sigs.shape[1]):
                sigs[d, j] = EMPTY_HASH
            continue
        m = _shingle_hashes(words, nwords, ngram, shingles)
        _permute_min(shingles, m, x_hi, x_lo, a_hi, a_lo, b, sigs[d])


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) coefficients of `num_perm` permutations: a in [1, p), b in [0, p)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, MERSENNE_61, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, MERSENNE_61, size=num_perm, dtype=np.uint64)
    return a, b


def signatures_of_normalized(buf: np.ndarray, offsets: np.ndarray, cfg: NearConfig) -> np.ndarray:
    """Signatures (n, num_perm) uint64 of documents already in normal form (UTF-8 bytes)."""
    a, b = permutations(cfg.num_perm, cfg.seed)
    sigs = np.empty((offsets.shape[0] - 1, cfg.num_perm), dtype=np.uint64)
    _signature_kernel(buf, offsets, cfg.ngram, a >> _S32, a & _M32, b, sigs)
    return sigs


def minhash_signatures(texts: Sequence[str], cfg: NearConfig) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint64 of raw texts (normalised here)."""
    buf, offsets = encode_batch(texts)
    norm, norm_offsets = normalize_bytes(buf, offsets)
    return signatures_of_normalized(norm, norm_offsets, cfg)


def shingle_hashes(text: str, ngram: int = 5) -> np.ndarray:
    """The distinct 64-bit shingle hashes of one text, as the kernel forms them.

    For exact-Jaccard ground truth and tests: two texts' true Jaccard similarity on the
    shingles the signatures summarise is |A & B| / |A | B| of these sets.
    """
    buf, offsets = encode_batch([text])
    norm, norm_offsets = normalize_bytes(buf, offsets)
    size = int(norm_offsets[1]) // 2 + 2
    words = np.empty(size, dtype=np.uint64)
    nwords = _word_hashes(norm, norm_offsets[0], norm_offsets[1], words)
    shingles = np.empty(size, dtype=np.uint64)
    m = _shingle_hashes(words, nwords, ngram, shingles)
    return np.unique(shingles[:m])
