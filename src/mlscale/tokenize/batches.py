"""Deterministic batch sampling: random windows of the token stream, a function of (seed, step).

The generator for step `s` is seeded by (seed, s) alone, so a run resumed at step s sees
exactly the batches it would have seen, and no sampler state needs saving. The draw is
for the GLOBAL batch (batch_size * world_size windows); rank r takes windows
[r * batch_size, (r + 1) * batch_size), so the data seen per step does not depend on how
many ranks share it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mlscale.errors import InputError


def window_starts(n_tokens: int, batch_size: int, seq_len: int, seed: int, step: int,
                  world_size: int = 1) -> np.ndarray:
    """Start offsets of the global batch's windows, uniform on [0, n_tokens - seq_len - 1]."""
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0 (got seed={seed}, step={step})")
    if n_tokens < seq_len + 1:
        raise InputError(f"the data has {n_tokens} tokens, fewer than one window of seq_len + 1 = "
                         f"{seq_len + 1}: use a shorter model.seq_len or more data")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step])))
    # as nanoGPT: torch.randint(len(data) - block_size, ...) -> x = data[i:i+T], y = data[i+1:i+T+1]
    return rng.integers(0, n_tokens - seq_len, size=batch_size * world_size, dtype=np.int64)


def sample_batch(data: Any, batch_size: int, seq_len: int, seed: int, step: int,
                 rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and next-token targets y, both LongTensor [batch_size, seq_len], on the CPU.

    `data` is a 1-D array of token ids (a `TokenData.split(...)`: memmap or ShardedArray).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1 (got {batch_size}, {seq_len})")
    starts = window_starts(len(data), batch_size, seq_len, seed, step, world_size)
    mine = starts[rank * batch_size:(rank + 1) * batch_size]
    # one gather for the whole batch: [B, T + 1] token ids
    windows = np.asarray(data[mine[:, None] + np.arange(seq_len + 1)], dtype=np.int64)
    buf = torch.from_numpy(windows)
    return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()
