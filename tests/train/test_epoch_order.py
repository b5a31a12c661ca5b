"""Seeded epoch permutations: every row once per epoch, a function of (seed, step) alone."""
import numpy as np

from mlscale.train.sampling import epoch_order


def test_epoch_order_visits_every_row_once_per_epoch_and_depends_only_on_seed_and_step():
    seen = np.concatenate([epoch_order(10, 4, seed=7, step=s) for s in range(5)])  # 20 = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert np.array_equal(epoch_order(10, 4, 7, 3), epoch_order(10, 4, 7, 3))
    assert not np.array_equal(epoch_order(10, 4, 7, 0), epoch_order(10, 4, 8, 0))
