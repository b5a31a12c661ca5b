"""Which rows a micro-batch takes: seeded epoch permutations, a pure function of (seed, step).

Tasks that draw examples from a finite set (instruction rows, images) walk seeded
permutations of it, one per epoch, so a resumed run draws exactly the rows it would have
and no sampler state needs saving. (Language modelling draws random windows instead:
tokenize/batches.py.)
"""
from __future__ import annotations

import numpy as np


def epoch_order(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Row indices of optimizer step `step`'s micro-batch, walking seeded epoch permutations.

    A pure function of (seed, step): a resumed run draws exactly the rows it would have.
    """
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(batch_size - len(out), n - offset)
        out.extend(perm[offset: offset + take].tolist())
    return np.asarray(out, dtype=np.int64)
