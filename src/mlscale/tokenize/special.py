"""The names of the special tokens, which every tokenizer file of mlscale carries.

Fixed names, so that any stage finds their ids in tokenizer.json alone: `<|bos|>`,
`<|eos|>`, `<|pad|>`, and `<|unk|>` for the char tokenizer. Their own module so that both
tokenizer kinds use them without importing each other.
"""
from __future__ import annotations

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
