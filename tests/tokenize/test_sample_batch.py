"""sample_batch: a function of (seed, step), nanoGPT's windows, the global batch split over ranks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlscale.errors import InputError
from mlscale.tokenize import sample_batch
from mlscale.tokenize.batches import window_starts
from mlscale.tokenize.data import ShardedArray

DATA = np.arange(5000, dtype=np.uint16) % 977  # distinct windows, known content


def test_windows_are_next_token_pairs_from_the_data():
    x, y = sample_batch(DATA, 8, 16, seed=3, step=11)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.long
    assert x.is_contiguous() and y.is_contiguous()
    starts = window_starts(len(DATA), 8, 16, 3, 11)
    for row, s in enumerate(starts):
        np.testing.assert_array_equal(x[row].numpy(), DATA[s:s + 16])
        np.testing.assert_array_equal(y[row].numpy(), DATA[s + 1:s + 17])


def test_deterministic_in_seed_and_step_only():
    a = sample_batch(DATA, 4, 32, seed=1, step=7)
    b = sample_batch(DATA, 4, 32, seed=1, step=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], sample_batch(DATA, 4, 32, seed=1, step=8)[0])
    assert not torch.equal(a[0], sample_batch(DATA, 4, 32, seed=2, step=7)[0])


def test_union_over_ranks_is_the_single_rank_batch():
    x1, y1 = sample_batch(DATA, 6, 20, seed=5, step=42)
    parts = [sample_batch(DATA, 3, 20, seed=5, step=42, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x1)
    assert torch.equal(torch.cat([p[1] for p in parts]), y1)
    assert not torch.equal(parts[0][0], parts[1][0])


def test_every_window_fits_and_the_last_one_is_reachable():
    data = np.arange(12, dtype=np.uint16)
    seen = set()
    for step in range(300):
        x, y = sample_batch(data, 4, 8, seed=0, step=step)
        seen.update(x[:, 0].tolist())
        assert int(y.max()) <= 11
    assert seen == {0, 1, 2, 3}  # starts 0..len-seq_len-1, as nanoGPT's randint(len - T)


def test_sharded_data_gives_the_same_batches():
    parts = [DATA[:1234], DATA[1234:1300], DATA[1300:]]
    a = sample_batch(ShardedArray(parts), 16, 64, seed=9, step=3)
    b = sample_batch(DATA, 16, 64, seed=9, step=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_arguments():
    with pytest.raises(InputError, match="fewer than one window"):
        sample_batch(DATA[:16], 2, 16, seed=0, step=0)
    with pytest.raises(ValueError, match="rank 2"):
        sample_batch(DATA, 2, 16, seed=0, step=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed and step"):
        sample_batch(DATA, 2, 16, seed=-1, step=0)
