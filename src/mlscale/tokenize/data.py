"""Reading token shards: `TokenData(TOK)` for the trainer and the evaluator."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mlscale.artifacts import MANIFEST, read_json
from mlscale.errors import ArtifactError
from mlscale.tokenize.shards import read_shard
from mlscale.tokenize.split import SPLITS
from mlscale.tokenize.tokenizer import Tokenizer, load_tokenizer


class ShardedArray:
    """Several 1-D shards seen as one read-only array (no copy).

    Supports `len`, integer and slice indexing, and fancy indexing with an integer array
    (what `sample_batch` uses to gather all windows of a batch at once).
    """

    def __init__(self, shards: list[np.ndarray]):
        self.shards = [s for s in shards if len(s)]
        self.dtype = shards[0].dtype if shards else np.dtype(np.uint16)
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.ndim = 1

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key: Any) -> Any:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._range(start, max(start, stop))
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} tokens")
            k = int(np.searchsorted(self.starts, i, side="right")) - 1
            return self.shards[k][i - self.starts[k]]
        idx = np.asarray(key)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"unsupported index {key!r}")
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for {n} tokens")
        out = np.empty(idx.shape, dtype=self.dtype)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.shards[k][idx[sel] - self.starts[k]]
        return out

    def _range(self, start: int, stop: int) -> np.ndarray:
        k0 = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts, pos, k = [], start, max(k0, 0)
        while pos < stop and k < len(self.shards):
            lo, hi = pos - self.starts[k], min(stop, self.starts[k + 1]) - self.starts[k]
            parts.append(self.shards[k][lo:hi])
            pos = int(self.starts[k + 1])
            k += 1
        if not parts:
            return np.empty(0, dtype=self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self._range(0, len(self))
        return arr.astype(dtype) if dtype is not None else np.asarray(arr)


class TokenData:
    """A finished `mlscale tokenize` output: its manifest, tokenizer and memory-mapped shards."""

    def __init__(self, tok_dir: str | Path):
        self.path = Path(tok_dir)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            what = "is unfinished (no manifest.json)" if (self.path / "stage.json").exists() else \
                "is not a `mlscale tokenize` output (no manifest.json)"
            raise ArtifactError(f"{self.path} {what}; run `mlscale tokenize ... --out {self.path}`")
        manifest = read_json(mpath, "tokenize manifest",
                             f"run `mlscale tokenize ... --out {self.path} --force` again")
        self.manifest: dict[str, Any] = manifest if isinstance(manifest, dict) else {}
        if self.manifest.get("stage") != "tokenize" or "splits" not in self.manifest:
            raise ArtifactError(f"{mpath} is not the manifest of a `mlscale tokenize` output")
        self.dtype = np.dtype(self.manifest["dtype"])
        self._arrays: dict[str, Any] = {}

    # -- facts ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def tokenizer_fingerprint(self) -> str:
        return str(self.manifest["tokenizer"]["fingerprint"])

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest["tokenizer"]["file"]

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self.manifest["tokenizer"]["special_ids"])

    @cached_property
    def tokenizer(self) -> Tokenizer:
        tok = load_tokenizer(self.tokenizer_path)
        if tok.fingerprint != self.tokenizer_fingerprint:
            raise ArtifactError(f"{self.tokenizer_path} is not the tokenizer these shards were made "
                                "with (fingerprint differs); rerun `mlscale tokenize --force`")
        return tok

    def _split_info(self, split: str) -> dict[str, Any]:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return self.manifest["splits"][split]

    def tokens(self, split: str) -> int:
        """Number of tokens of `split` (eos tokens included)."""
        return int(self._split_info(split)["tokens"])

    def documents(self, split: str) -> int:
        return int(self._split_info(split)["documents"])

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 bytes of text per token (for bits per byte); nan for an empty split."""
        v = self._split_info(split)["bytes_per_token"]
        return float("nan") if v is None else float(v)

    # -- data ----------------------------------------------------------------------------
    def check_ids(self, name: str, vocab_size: int) -> None:
        """Refuse split `name` if a shard holds a token id outside 0..vocab_size-1 (a shard
        damaged after tokenizing, or made with another tokenizer), naming the shard."""
        for sh in self._split_info(name)["shards"]:
            tokens = read_shard(self.path / sh["file"], self.dtype)
            top = int(tokens.max()) if len(tokens) else -1
            if top >= vocab_size:
                raise ArtifactError(f"{self.path / sh['file']} holds token id {top}, outside the "
                                    f"vocabulary of {vocab_size}: the shard is damaged or not of this "
                                    "tokenizer; rerun `mlscale tokenize --force`")

    def split(self, name: str) -> np.ndarray | ShardedArray:
        """All tokens of split `name` as one read-only 1-D array (memory-mapped, no copy)."""
        if name not in self._arrays:
            shards = []
            for sh in self._split_info(name)["shards"]:
                p = self.path / sh["file"]
                if not p.is_file() or p.stat().st_size != sh["bytes"]:
                    raise ArtifactError(f"{p} is missing or truncated; rerun `mlscale tokenize --force`")
                shards.append(read_shard(p, self.dtype))
            if not shards:
                self._arrays[name] = np.empty(0, dtype=self.dtype)
            elif len(shards) == 1:
                self._arrays[name] = shards[0]
            else:
                self._arrays[name] = ShardedArray(shards)
        return self._arrays[name]

    def __repr__(self) -> str:
        parts = ", ".join(f"{s}={self.tokens(s):,} tokens" for s in SPLITS)
        return f"TokenData({str(self.path)!r}, vocab_size={self.vocab_size}, {parts})"
