"""Settings of `mlscale tokenize`: which tokenizer, how inputs are read, the split, the shards."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mlscale.config import option, to_dict
from mlscale.errors import ConfigError

# Byte-level BPE starts from the 256 byte symbols and the special tokens.
MIN_BPE_VOCAB = 256 + 3


@dataclass
class TokenizerConfig:
    kind: Literal["bpe", "char"] = option(
        "bpe", "byte-level BPE (Hugging Face tokenizers) or one token per character (nanoGPT's char model)",
        choices=("bpe", "char"))
    vocab_size: int = option(8192, "BPE vocabulary size incl. the special tokens (ignored by char)",
                             min=MIN_BPE_VOCAB, max=1 << 24)
    min_frequency: int = option(2, "BPE: a pair must occur this often to be merged", min=1)
    train_bytes: int = option(0, "BPE: train on at most this many UTF-8 bytes of the train split "
                                 "(in input order); 0 = all of it", min=0)


@dataclass
class InputConfig:
    text_field: str = option("text", "JSONL field / Parquet column holding the document text")
    id_field: str = option("id", "JSONL field / Parquet column holding the document id; when absent "
                                 "the id is <file name>#<line or row>")


@dataclass
class SplitConfig:
    val_fraction: float = option(0.1, "share of documents (by a hash of their id) that go to val; a single "
                                      "plain-text file is split by position instead, as nanoGPT", min=0.0, max=0.9)
    seed: int = option(0, "salt of the document-id hash that assigns documents to splits", min=0)


@dataclass
class ShardConfig:
    shard_tokens: int = option(1 << 26, "tokens per shard file (the last shard of a split is shorter)",
                               min=1024)
    workers: int = option(0, "encoding processes; 0 = one per CPU core. Does not change the output",
                          min=0)
    batch_chars: int = option(1 << 18, "characters of text sent to a worker at a time. Does not change "
                                       "the output", min=1024)


@dataclass
class TokenizeConfig:
    """Everything `mlscale tokenize` is configured with (TOML sections [tokenizer], [input], ...)."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    input: InputConfig = field(default_factory=InputConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def validate(self) -> None:
        if not self.input.text_field:
            raise ConfigError("input.text_field must not be empty")

    def content_dict(self) -> dict[str, Any]:
        """The settings that decide the output (what the stage directory is keyed by).

        Execution settings (workers, batch size) are left out on purpose: the shards do not
        depend on them, so changing them on a finished or interrupted run is not an error.
        """
        d = to_dict(self)
        d["shards"] = {"shard_tokens": self.shards.shard_tokens}  # not workers, batch_chars
        return d
