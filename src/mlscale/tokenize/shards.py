"""Token shards: each split's token stream cut into raw `.bin` files of fixed length.

A shard is a flat array of token ids (uint16 when the vocabulary fits, else uint32) that
`np.memmap` opens without parsing: `TOK/train-00000.bin`, `TOK/train-00001.bin`, ...
Shards are written atomically, one completion marker each. The marker records where in
the split's piece stream the next shard starts (piece index, tokens of that piece already
written), so an interrupted run resumes after its last complete shard and produces the
same bytes as an uninterrupted one.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlscale.artifacts import StageDir, atomic_path, fingerprint_file


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


@dataclass
class ResumePoint:
    """Where a split's stream continues: skip pieces before `piece`, and the first
    `offset` tokens of piece `piece`."""

    shards: list[dict]
    piece: int = 0
    offset: int = 0


@dataclass
class _Chunk:
    """Consecutive pieces of one split, concatenated, waiting to be written."""

    first_piece: int
    first_taken: int  # tokens of the first piece written before this chunk (on resume)
    ends: np.ndarray  # cumulative token counts of its pieces
    tokens: np.ndarray
    pos: int = 0  # tokens of this chunk already written


class ShardWriter:
    """Appends one split's pieces in order and writes full shards as they fill up."""

    def __init__(self, stage: StageDir, split: str, dtype: np.dtype, shard_tokens: int):
        self.stage, self.split, self.dtype, self.shard_tokens = stage, split, dtype, shard_tokens
        self.resume = self._find_resume_point()
        self.shards: list[dict] = list(self.resume.shards)
        self._chunks: deque[_Chunk] = deque()
        self._pending_tokens = 0
        self._next_piece = self.resume.piece

    # -- resume -------------------------------------------------------------------------
    def _find_resume_point(self) -> ResumePoint:
        done: list[dict] = []
        point = ResumePoint(shards=done)
        k = 0
        while True:
            unit = self._unit(k)
            path = self.stage.path / shard_name(self.split, k)
            if not self.stage.unit_done(unit) or not path.exists():
                break
            payload = self.stage.unit_payload(unit)
            if path.stat().st_size != payload["tokens"] * self.dtype.itemsize:
                break  # truncated behind our back: redo from here
            done.append(payload["shard"])
            point.piece, point.offset = payload["next_piece"], payload["next_offset"]
            k += 1
        # Anything after the last good shard is from the interrupted attempt: remove it.
        for stale in self.stage.path.glob(f"{self.split}-*.bin"):
            if int(stale.stem.rsplit("-", 1)[1]) >= k:
                stale.unlink()
        return point

    def _unit(self, k: int) -> str:
        return f"shard-{self.split}-{k:05d}"

    # -- writing ------------------------------------------------------------------------
    def wants(self, piece: int) -> bool:
        """Whether piece number `piece` of this split still has tokens to write."""
        return piece >= self.resume.piece

    def append(self, piece: int, tokens: np.ndarray) -> None:
        """Add the tokens of piece number `piece`."""
        self.extend(piece, tokens, np.array([len(tokens)], dtype=np.int64))

    def extend(self, first_piece: int, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Add pieces first_piece, first_piece + 1, ... (`lengths` tokens each, concatenated
        in `tokens`). Pieces must come in order, each exactly once."""
        if len(lengths) == 0:
            return
        if first_piece != self._next_piece:
            raise RuntimeError(f"{self.split}: piece {first_piece} out of order (expected {self._next_piece})")
        self._next_piece += len(lengths)
        lengths = np.asarray(lengths, dtype=np.int64)
        taken = 0
        if first_piece == self.resume.piece and self.resume.offset:
            taken = self.resume.offset  # already in the last shard of the interrupted run
            tokens, lengths = tokens[taken:], lengths.copy()
            lengths[0] -= taken
        self._chunks.append(_Chunk(first_piece, taken, np.cumsum(lengths), tokens.astype(self.dtype, copy=False)))
        self._pending_tokens += len(tokens)
        while self._pending_tokens >= self.shard_tokens:
            self._write(self.shard_tokens)

    def close(self) -> list[dict]:
        """Write the last (short) shard; the list of all shards of this split."""
        if self._pending_tokens:
            self._write(self._pending_tokens)
        return self.shards

    def _next_position(self) -> tuple[int, int]:
        """(piece, tokens of it already written) of the first token not yet written."""
        if not self._chunks:
            return self._next_piece, 0
        c = self._chunks[0]
        k = int(np.searchsorted(c.ends, c.pos, side="right"))
        start = int(c.ends[k - 1]) if k else 0
        return c.first_piece + k, c.pos - start + (c.first_taken if k == 0 else 0)

    def _write(self, n: int) -> None:
        parts, need = [], n
        while need:
            c = self._chunks[0]
            take = min(len(c.tokens) - c.pos, need)
            parts.append(c.tokens[c.pos:c.pos + take])
            c.pos += take
            need -= take
            if c.pos == len(c.tokens):
                self._chunks.popleft()
        self._pending_tokens -= n
        next_piece, next_offset = self._next_position()
        data = np.concatenate(parts) if len(parts) > 1 else parts[0]
        k = len(self.shards)
        path = self.stage.path / shard_name(self.split, k)
        with atomic_path(path) as tmp:
            np.ascontiguousarray(data, dtype=self.dtype).tofile(tmp)
        shard = {"file": path.name, "tokens": int(n), "bytes": int(n * self.dtype.itemsize),
                 "xxh3": fingerprint_file(path)}
        self.stage.mark_done(self._unit(k), {"shard": shard, "tokens": int(n),
                                             "next_piece": int(next_piece), "next_offset": int(next_offset)})
        self.shards.append(shard)


def read_shard(path: Path, dtype: np.dtype) -> np.memmap | np.ndarray:
    """A read-only memory map of one shard (an empty array for an empty file)."""
    if path.stat().st_size == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
