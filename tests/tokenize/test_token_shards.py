"""ShardWriter: fixed-size shards from pieces fed in groups, and exact resume mid-piece."""
from __future__ import annotations

import numpy as np
import pytest

from mlscale.artifacts import StageDir
from mlscale.tokenize.shards import ShardWriter, read_shard


def pieces(seed: int, n: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 60000, size=int(rng.integers(1, 90)), dtype=np.uint32) for _ in range(n)]


def feed(writer: ShardWriter, ps: list[np.ndarray], rng: np.random.Generator, stop_after: int | None = None) -> None:
    """Give the writer the pieces it still wants, in random groups (as batches do)."""
    i = 0
    while i < len(ps):
        if not writer.wants(i):
            i += 1
            continue
        g = int(rng.integers(1, 7))
        group = ps[i:i + g]
        writer.extend(i, np.concatenate(group), np.array([len(p) for p in group]))
        i += len(group)
        if stop_after is not None and len(writer.shards) >= stop_after:
            raise KeyboardInterrupt


def read_all(stage_dir, shards) -> np.ndarray:
    return np.concatenate([read_shard(stage_dir / s["file"], np.dtype(np.uint16)) for s in shards])


@pytest.mark.parametrize("seed", range(6))
def test_resume_mid_piece_gives_the_uninterrupted_stream(tmp_path, seed):
    ps = pieces(seed)
    expected = np.concatenate(ps)
    rng = np.random.default_rng(100 + seed)
    shard_tokens = int(rng.integers(20, 200))

    stage = StageDir.open(tmp_path / "a", "tokenize", {}, {})
    w = ShardWriter(stage, "train", np.dtype(np.uint16), shard_tokens)
    with pytest.raises(KeyboardInterrupt):
        feed(w, ps, rng, stop_after=int(rng.integers(1, len(expected) // shard_tokens)))
    # a half-written next shard from the crash is discarded on resume
    (tmp_path / "a" / f"train-{len(w.shards):05d}.bin").write_bytes(b"\x00" * 10)

    stage = StageDir.open(tmp_path / "a", "tokenize", {}, {})
    w2 = ShardWriter(stage, "train", np.dtype(np.uint16), shard_tokens)
    assert len(w2.shards) == len(w.shards) and w2.resume.piece > 0
    feed(w2, ps, rng)
    shards = w2.close()
    got = read_all(tmp_path / "a", shards)
    np.testing.assert_array_equal(got, expected)
    assert all(s["tokens"] == shard_tokens for s in shards[:-1])
    assert sorted(p.name for p in (tmp_path / "a").glob("*.bin")) == [s["file"] for s in shards]


def test_pieces_must_come_in_order(tmp_path):
    w = ShardWriter(StageDir.open(tmp_path / "b", "tokenize", {}, {}), "val", np.dtype(np.uint16), 100)
    w.append(0, np.arange(5, dtype=np.uint32))
    with pytest.raises(RuntimeError, match="out of order"):
        w.append(2, np.arange(5, dtype=np.uint32))
