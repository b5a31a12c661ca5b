"""Parallel encoding: batches of texts -> one flat token array per batch, in input order.

Each worker loads tokenizer.json once and encodes a whole batch with the Rust batch
encoder (its own thread pool off, so `workers` is the number of cores used), appends eos
where asked, and returns the batch as one flat array plus per-text lengths and UTF-8
sizes: three arrays instead of thousands of small ones, so the main process does not
become the bottleneck unpickling them. Results come back in submission order with at
most `2 * workers` batches in flight, so memory stays bounded and the output never
depends on the number of workers. Input that fits in one batch is encoded in the calling
process: starting workers would cost more.

Workers are forked on Linux (spawn would re-run the caller's `__main__`, which breaks
scripts without a main guard and `python -`); the Rust thread pool the parent may hold
from BPE training is not used in the children (TOKENIZERS_PARALLELISM=false, which the
`tokenizers` fork handler honours). Elsewhere they are spawned.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

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


_worker_tokenizer: Tokenizer | None = None


def default_workers() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def _init_worker(path: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = load_tokenizer(Path(path))


def _encode_in_worker(texts: Sequence[str], eos: Sequence[bool]) -> EncodedBatch:
    assert _worker_tokenizer is not None
    return encode_texts(_worker_tokenizer, texts, eos)


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


Job = tuple[Sequence[str], Sequence[bool]]


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
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pending: deque = deque()
    with _single_threaded(), ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                 initargs=(str(tokenizer.path),)) as pool:
        for texts, eos in chain(head, it):
            pending.append(pool.submit(_encode_in_worker, list(texts), list(eos)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
