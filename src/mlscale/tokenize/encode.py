"""Parallel encoding: batches of texts -> one flat token array per batch, in input order.

Each worker loads tokenizer.json once and encodes a whole batch with the Rust batch
encoder (its own thread pool off, so `workers` is the number of cores used), appends eos
where asked, and returns the batch as one flat array plus per-text lengths and UTF-8
sizes: three arrays instead of thousands of small ones, so the main process does not
become the bottleneck unpickling them. The workers are those of every data stage
(`mlscale.executors`, its in-order `imap`): results come back in submission order with
at most `2 * workers` batches in flight, so memory stays bounded and the output never
depends on the number of workers. Input that fits in one batch is encoded in the calling
process: starting workers would cost more.

Workers are forked from this process on Linux (a fork server or spawn would re-run the
caller's `__main__`, which breaks scripts without a main guard and `python -`); the Rust
thread pool the parent may hold from BPE training is not used in the children
(TOKENIZERS_PARALLELISM=false, which the `tokenizers` fork handler honours). Elsewhere
they are spawned.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from mlscale.executors import ProcessExecutor, available_cores
from mlscale.tokenize.tokenizer import Tokenizer, load_tokenizer


@dataclass
class EncodedBatch:
    """A batch of texts encoded back to back."""

    tokens: np.ndarray  # uint32, all texts' ids (+ eos where asked), concatenated
    lengths: np.ndarray  # int64, tokens per text (eos included)
    nbytes: np.ndarray  # int64, UTF-8 bytes per text


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], eos: Sequence[bool]) -> EncodedBatch:
    """Encode `texts`, append eos after those flagged, and concatenate."""
    arrays = tokenizer.encode_batch(texts)
    eos_arr = np.array([tokenizer.eos_id], dtype=np.uint32)
    parts: list[np.ndarray] = []
    for ids, end in zip(arrays, eos):
        parts.append(ids)
        if end:
            parts.append(eos_arr)
    lengths = np.fromiter((len(a) + int(e) for a, e in zip(arrays, eos)), dtype=np.int64, count=len(arrays))
    nbytes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)
    return EncodedBatch(flat.astype(np.uint32, copy=False), lengths, nbytes)


Job = tuple[Sequence[str], Sequence[bool]]

_worker_tokenizer: tuple[str, Tokenizer] | None = None  # (path, tokenizer) in a worker


def default_workers() -> int:
    """Cores this process may use."""
    return available_cores()


def _encode_in_worker(path: str, job: Job) -> EncodedBatch:
    """A worker's task: encode one batch with the tokenizer at `path` (loaded once)."""
    global _worker_tokenizer
    if _worker_tokenizer is None or _worker_tokenizer[0] != path:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        _worker_tokenizer = (path, load_tokenizer(Path(path)))
    texts, eos = job
    return encode_texts(_worker_tokenizer[1], texts, eos)


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Keep the Rust encoder to one thread while this process encodes or forks."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def encode_batches(tokenizer: Tokenizer, batches: Iterable[Job], workers: int) -> Iterator[EncodedBatch]:
    """Encode every (texts, eos flags) batch, yielding the results in order."""
    it = iter(batches)
    head = [b for _, b in zip(range(2), it)]
    if workers <= 1 or len(head) < 2:
        with _single_threaded():
            for texts, eos in chain(head, it):
                yield encode_texts(tokenizer, texts, eos)
        return
    if tokenizer.path is None:
        raise ValueError("parallel encoding needs a tokenizer saved to a file")
    jobs = ((list(texts), list(eos)) for texts, eos in chain(head, it))
    start = "fork" if sys.platform.startswith("linux") else "spawn"
    with _single_threaded(), ProcessExecutor(workers, start_method=start) as pool:
        yield from pool.imap(_encode_in_worker, str(tokenizer.path), jobs, window=2 * workers)
