"""Tokenizers as Hugging Face `tokenizers` JSON files: byte-level BPE training and loading.

Both kinds (BPE and char) live in one `tokenizer.json` that `tokenizers.Tokenizer.from_file`
loads on its own. Special tokens have fixed names so that any stage can find their ids in
the file alone: `<|bos|>`, `<|eos|>`, `<|pad|>` (and `<|unk|>` for the char tokenizer).

`Tokenizer.encode` treats text that happens to spell a special token ("<|eos|>") as plain
text: web documents contain such strings, and a document must never end itself early.
Stages that need the special tokens use their ids (`bos_id`, `eos_id`, `pad_id`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from mlscale.artifacts import fingerprint_file, fingerprint_obj
from mlscale.errors import ArtifactError
from mlscale.tokenize.char import CharTable
from mlscale.tokenize.special import BOS, EOS, PAD, SPECIAL_TOKENS, UNK

TOKENIZER_FILE = "tokenizer.json"

# Names other tokenizer families use for the same roles, so that foreign tokenizer.json
# files (GPT-2, LLaMA) load too. The first name found wins.
_ROLE_NAMES = {
    "bos": (BOS, "<s>", "<|begin_of_text|>", "<|endoftext|>"),
    "eos": (EOS, "</s>", "<|end_of_text|>", "<|endoftext|>"),
    "pad": (PAD, "<pad>", "<|finetune_right_pad_id|>"),
    "unk": (UNK, "<unk>"),
}


class Tokenizer:
    """A `tokenizers.Tokenizer` with the ids of its special tokens and where it came from."""

    def __init__(self, hf: tokenizers.Tokenizer, path: Path | None = None):
        self.hf = hf
        self.path = path
        # Text that spells a special token is encoded as ordinary text (see module doc).
        self.hf.encode_special_tokens = True
        ids = {role: _first_id(hf, names) for role, names in _ROLE_NAMES.items()}
        if ids["eos"] is None:
            raise ArtifactError(
                f"{path or 'tokenizer'}: no end-of-text token ({', '.join(_ROLE_NAMES['eos'])}); "
                "make the tokenizer with `mlscale tokenize`")
        self.eos_id: int = ids["eos"]
        # GPT-2-style files have one <|endoftext|> for everything.
        self.bos_id: int = ids["bos"] if ids["bos"] is not None else self.eos_id
        self.pad_id: int = ids["pad"] if ids["pad"] is not None else self.eos_id
        self.unk_id: int | None = ids["unk"]
        self.kind = _kind(hf)
        self._char_table = None
        if self.kind == "char":
            self._char_table = CharTable.from_tokenizer(hf)

    # -- properties -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of token ids (max id + 1), including the special tokens."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def fingerprint(self) -> str:
        """xxh3 of the tokenizer.json bytes, as `artifacts.fingerprint_file` (what runs record);
        for a tokenizer not loaded from a file, of its JSON text."""
        if self.path is not None and self.path.is_file():
            return fingerprint_file(self.path)
        return fingerprint_obj(self.hf.to_str())

    @property
    def special_ids(self) -> dict[str, int]:
        out = {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id}
        if self.unk_id is not None:
            out["unk"] = self.unk_id
        return out

    # -- encoding ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no bos/eos added)."""
        if self._char_table is not None:
            return self._char_table.encode(text).tolist()
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of `text` as a uint32 array (no bos/eos added)."""
        if self._char_table is not None:
            return self._char_table.encode(text)
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.uint32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text, as uint32 arrays; uses the Rust encoder's batch path."""
        if self._char_table is not None:
            return [self._char_table.encode(t) for t in texts]
        encs = self.hf.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.uint32) for e in encs]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; decode(encode(s)) == s for both kinds (char: for known characters)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, path={str(self.path)!r})"


def _first_id(hf: tokenizers.Tokenizer, names: Iterable[str]) -> int | None:
    for name in names:
        i = hf.token_to_id(name)
        if i is not None:
            return i
    return None


def _kind(hf: tokenizers.Tokenizer) -> str:
    model = type(hf.model).__name__
    if model == "WordLevel" and type(hf.decoder).__name__ == "Fuse":
        return "char"
    return model.lower()  # "bpe", "unigram", "wordpiece", ...


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load `path` (a tokenizer.json, or a directory holding one: TOK/ or RUN/)."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise ArtifactError(f"tokenizer not found: {path}; make one with `mlscale tokenize`")
    try:
        hf = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise ArtifactError(f"{path} is not a valid tokenizer.json ({e}); rerun `mlscale tokenize`") from None
    return Tokenizer(hf, path)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
              progress: bool = True, length: int | None = None) -> tokenizers.Tokenizer:
    """Train a GPT-2-style byte-level BPE on `texts`; special tokens get ids 0, 1, 2.

    The byte alphabet is always included, so any text encodes without an unknown token
    and decodes back exactly.
    """
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    hf.train_from_iterator(_nonempty(texts), trainer=trainer, length=length)
    return hf


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    return (t for t in texts if t)
