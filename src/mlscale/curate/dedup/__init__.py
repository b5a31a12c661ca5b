"""Exact and near-duplicate detection: the building blocks, and a one-process driver.

Near duplicates (MinHash LSH, after Broder 1997 and Mining of Massive Datasets ch. 3):

    sigs  = minhash_signatures(texts, cfg)                 # (n, num_perm) uint64
    keys  = band_keys(sigs, bands, rows)                   # (n, bands) uint64
    pairs = bucket_pairs(keys[:, band], doc_ids)           # per band, (p, 2) int64
    keep  = estimated_jaccard(sigs[a], sigs[b]) >= cfg.threshold   # verification
    labels = connected_components(n, pairs)
    duplicate_of, cluster_id = choose_survivors(labels, order_key)

`near_duplicates` runs these in one process with signatures and band keys spilled to
temporary files (memory: one batch, one band's keys, the candidate pairs); the curate
pipeline stages the same pieces on disk as parallel, resumable tasks.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from mlscale.curate.dedup.clusters import choose_survivors, connected_components
from mlscale.curate.dedup.config import ExactConfig, NearConfig, lsh_probability, \
    optimal_band_rows
from mlscale.curate.dedup.exact import exact_duplicates, exact_keys, exact_labels
from mlscale.curate.dedup.lsh import NO_BUCKET, band_keys, bucket_pairs, estimated_jaccard
from mlscale.curate.dedup.minhash import EMPTY_HASH, minhash_signatures, shingle_hashes
from mlscale.curate.dedup.normalize import normalize_text

__all__ = [
    "EMPTY_HASH", "NO_BUCKET", "ExactConfig", "NearConfig", "NearResult", "band_keys",
    "bucket_pairs", "choose_survivors", "connected_components", "estimated_jaccard",
    "exact_duplicates", "exact_keys", "exact_labels", "lsh_probability", "minhash_signatures",
    "near_duplicates", "normalize_text", "optimal_band_rows", "shingle_hashes",
    "verify_pairs",
]


@dataclass
class NearResult:
    """Outcome of near-duplicate detection over documents 0..n-1."""

    duplicate_of: np.ndarray  # (n,) int64: survivor's index for removed documents, else -1
    cluster_id: np.ndarray  # (n,) int64: cluster number, -1 for documents in no cluster
    pairs: np.ndarray  # (p, 2) int64 duplicate pairs (i < j), verified if cfg.verify
    candidates: int  # distinct candidate pairs from LSH, before verification
    bands: int
    rows: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def removed(self) -> np.ndarray:
        """Boolean mask of the documents removed as near duplicates."""
        return self.duplicate_of >= 0

    @property
    def num_removed(self) -> int:
        return int(self.removed.sum())


def verify_pairs(pairs: np.ndarray, sigs: np.ndarray, threshold: float,
                 chunk: int = 1 << 20, return_mask: bool = False) -> np.ndarray:
    """The pairs (rows of `sigs`) whose signature-estimated Jaccard is >= threshold.

    With `return_mask`, the boolean mask over `pairs` instead of the kept pairs.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    keep = np.zeros(pairs.shape[0], dtype=bool)
    for lo in range(0, pairs.shape[0], chunk):
        part = pairs[lo: lo + chunk]
        est = estimated_jaccard(sigs[part[:, 0]], sigs[part[:, 1]])
        # Compare in counts of equal entries: no float rounding at the threshold.
        need = np.ceil(threshold * sigs.shape[1] - 1e-9)
        keep[lo: lo + chunk] = np.rint(est * sigs.shape[1]) >= need
    return keep if return_mask else pairs[keep]


def near_duplicates(texts: Iterable[str], cfg: NearConfig | None = None,
                    batch_size: int = 8192, batch_chars: int = 16_000_000,
                    progress: bool = False) -> NearResult:
    """Find near-duplicate clusters in `texts`; the survivor is the earliest document.

    Texts are consumed in batches of at most `batch_size` documents or `batch_chars`
    characters. Signatures and each band's keys are appended to temporary files, so
    resident memory is one batch's working set, plus one band's keys (8 bytes per
    document) while its buckets are sorted, plus the candidate pairs.
    """
    cfg = cfg or NearConfig()
    bands, rows = cfg.band_rows()
    seconds = {"signatures": 0.0, "buckets": 0.0, "verify": 0.0, "clusters": 0.0}
    with tempfile.TemporaryDirectory(prefix="mlscale-near-") as tmp:
        sig_path = os.path.join(tmp, "signatures.u64")
        band_paths = [os.path.join(tmp, f"band-{b:03d}.u64") for b in range(bands)]
        n = 0
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(desc="minhash", unit="doc")
        with contextlib.ExitStack() as stack:
            sig_file = stack.enter_context(open(sig_path, "wb"))
            band_files = [stack.enter_context(open(p, "wb")) for p in band_paths]
            batch: list[str] = []
            chars = 0
            for text in _with_flush(texts):
                if text is not None:
                    batch.append(text)
                    chars += len(text)
                if batch and (len(batch) >= batch_size or chars >= batch_chars or text is None):
                    sigs = minhash_signatures(batch, cfg)
                    sigs.tofile(sig_file)
                    keys = band_keys(sigs, bands, rows)
                    for band, fh in enumerate(band_files):
                        np.ascontiguousarray(keys[:, band]).tofile(fh)
                    n += len(batch)
                    if bar is not None:
                        bar.update(len(batch))
                    batch = []
                    chars = 0
        if bar is not None:
            bar.close()
        t1 = time.perf_counter()
        seconds["signatures"] = t1 - t0

        doc_ids = np.arange(n, dtype=np.int64)
        codes = np.empty(0, dtype=np.int64)  # pair (i, j) as i * n + j: one sortable int
        for path in band_paths:
            pairs = bucket_pairs(np.fromfile(path, dtype=np.uint64), doc_ids, cfg.max_bucket)
            codes = np.union1d(codes, pairs[:, 0] * n + pairs[:, 1])
        candidates = np.stack([codes // max(n, 1), codes % max(n, 1)], axis=1)
        t2 = time.perf_counter()
        seconds["buckets"] = t2 - t1

        if cfg.verify and candidates.shape[0]:
            pairs = _verify_from_file(candidates, sig_path, cfg.num_perm, cfg.threshold)
        else:
            pairs = candidates
        t3 = time.perf_counter()
        seconds["verify"] = t3 - t2

    labels = connected_components(n, pairs)
    survivor, cluster_id = choose_survivors(labels, doc_ids)
    duplicate_of = np.where(survivor == doc_ids, -1, survivor)
    seconds["clusters"] = time.perf_counter() - t3
    return NearResult(duplicate_of, cluster_id, pairs, int(candidates.shape[0]), bands, rows,
                      seconds)


def _verify_from_file(pairs: np.ndarray, path: str, num_perm: int, threshold: float,
                      chunk: int = 1 << 15) -> np.ndarray:
    """`verify_pairs` reading only the needed signature rows from the file at `path`.

    Rows are read with pread rather than a memory map, so they do not stay resident as
    mapped pages of a file that is ~900 bytes per document; a chunk of pairs needs at
    most 2 * chunk rows in memory.
    """
    row_bytes = num_perm * 8
    kept = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for lo in range(0, pairs.shape[0], chunk):
            part = pairs[lo: lo + chunk]
            ids = np.unique(part)
            rows = np.empty((ids.shape[0], num_perm), dtype=np.uint64)
            for k, i in enumerate(ids.tolist()):
                rows[k] = np.frombuffer(os.pread(fd, row_bytes, i * row_bytes), dtype=np.uint64)
            local = np.searchsorted(ids, part)
            kept.append(part[verify_pairs(local, rows, threshold, return_mask=True)])
    finally:
        os.close(fd)
    return np.concatenate(kept) if kept else np.empty((0, 2), np.int64)


def _with_flush(texts: Iterable[str]) -> Iterable[str | None]:
    """The texts, then None to flush the last partial batch."""
    yield from texts
    yield None
