"""Which split a document goes to: a hash of its id, so the choice is stable across runs,
machines, input order and worker counts."""
from __future__ import annotations

import xxhash

TRAIN, VAL = "train", "val"
SPLITS = (TRAIN, VAL)
_SCALE = float(1 << 64)


def split_of(doc_id: str, val_fraction: float, seed: int = 0) -> str:
    """"val" for about `val_fraction` of ids (uniform 64-bit hash below the fraction), else "train"."""
    if val_fraction <= 0.0:
        return TRAIN
    h = xxhash.xxh3_64_intdigest(f"{seed}\x00{doc_id}".encode("utf-8", "surrogatepass"))
    return VAL if h / _SCALE < val_fraction else TRAIN


def position_split(n_chars: int, val_fraction: float) -> int:
    """Index of the first val character of a text of `n_chars` characters.

    nanoGPT's prepare.py: `train_data = data[:int(n*0.9)]`, `val_data = data[int(n*0.9):]`.
    """
    return int(n_chars * (1.0 - val_fraction))
