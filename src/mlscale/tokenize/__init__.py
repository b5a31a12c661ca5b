"""Tokenizers (byte-level BPE, characters), token shards and deterministic batch sampling.

    from mlscale.tokenize import tokenize_corpus, TokenizeConfig, load_tokenizer, TokenData, sample_batch

Names are imported on first use so that `mlscale --help` does not load numpy or tokenizers.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TokenizeConfig": "mlscale.tokenize.config",
    "Tokenizer": "mlscale.tokenize.tokenizer",
    "load_tokenizer": "mlscale.tokenize.tokenizer",
    "train_bpe": "mlscale.tokenize.tokenizer",
    "build_char_tokenizer": "mlscale.tokenize.char",
    "tokenize_corpus": "mlscale.tokenize.stage",
    "TokenData": "mlscale.tokenize.data",
    "sample_batch": "mlscale.tokenize.batches",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlscale.tokenize' has no attribute {name!r}")
