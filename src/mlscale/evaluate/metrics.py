"""Loss, perplexity and bits per byte of a model on a stream of tokens.

Bits per byte (the loss in bits spread over the UTF-8 bytes the tokens stand for) is the
figure that compares models with different tokenizers: a bigger vocabulary lowers the
loss per token but not the cost of encoding the text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

LN2 = math.log(2.0)


@dataclass
class LossTotals:
    """Summed next-token cross entropy (nats) and how many tokens were predicted."""

    nats: float
    tokens: int

    @property
    def loss(self) -> float:
        return self.nats / self.tokens if self.tokens else float("nan")


def perplexity(loss: float) -> float:
    """exp(mean cross entropy in nats); inf rather than an overflow error for huge losses."""
    return math.exp(loss) if loss < 700 else float("inf")


def bits_per_byte(loss: float, bytes_per_token: float) -> float:
    """Mean loss per token in nats -> bits per UTF-8 byte of the text."""
    return loss / LN2 / bytes_per_token


def summarize(totals: LossTotals, bytes_per_token: float | None) -> dict[str, Any]:
    """The JSON-able figures `mlscale evaluate` prints."""
    loss = totals.loss
    return {
        "tokens": totals.tokens,
        "loss": loss,
        "perplexity": perplexity(loss),
        "bits_per_byte": bits_per_byte(loss, bytes_per_token) if bytes_per_token else None,
        "bytes_per_token": bytes_per_token,
    }


def _windows(n: int, seq_len: int) -> list[tuple[int, int]]:
    """Non-overlapping (start, length) windows so every token after the first is predicted once."""
    out = []
    start = 0
    while start < n - 1:
        length = min(seq_len, n - 1 - start)
        out.append((start, length))
        start += length
    return out


@torch.no_grad()
def evaluate_tokens(model: nn.Module, tokens: Any, seq_len: int, batch_size: int = 16,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    max_tokens: int | None = None, progress: bool = True) -> LossTotals:
    """Cross entropy of `model` on every token of `tokens` (1-D ids), in windows of `seq_len`.

    Each window starts from an empty context, as in training, so tokens early in a window see
    less context than late ones: the standard non-overlapping evaluation (nanoGPT, GPT-2).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    windows = _windows(n, seq_len)
    full = [w for w in windows if w[1] == seq_len]
    partial = [w for w in windows if w[1] != seq_len]
    was_training = model.training
    model.eval()
    nats = 0.0
    counted = 0
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in partial]
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32
                else torch.autocast(device_type=device.type, enabled=False))
    for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
        length = batch[0][1]
        chunk = np.stack([np.asarray(tokens[s:s + length + 1], dtype=np.int64) for s, _ in batch])
        ids = torch.from_numpy(chunk).to(device)
        with autocast:
            _, loss = model(ids[:, :-1], ids[:, 1:])
        count = len(batch) * length
        nats += float(loss.double()) * count  # the model returns the mean over the batch
        counted += count
    model.train(was_training)
    return LossTotals(nats=nats, tokens=counted)
