"""Supervised instruction tuning: next-token loss on the answers of packed examples.

The prompt tokens carry target -100 (see data.py), so the mean cross entropy the model
returns is over answer tokens only; segment ids keep packed examples from attending to
each other and position ids restart for each.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from mlscale.finetune.data import IGNORE, PackedRows
from mlscale.train.device import autocast
from mlscale.train.loop import Runtime


def sft_loss(model: nn.Module, batch: dict[str, torch.Tensor], runtime: Runtime) -> tuple[torch.Tensor, int]:
    """Mean cross entropy over the answer tokens of a packed batch, and their number."""
    with autocast(runtime.device, runtime.dtype):
        _, loss = model(batch["x"], batch["y"], position_ids=batch["position_ids"],
                        segment_ids=batch["segment_ids"])
    return loss, int((batch["y"] != IGNORE).sum())


@torch.no_grad()
def evaluate_sft(model: nn.Module, rows: PackedRows, batch_size: int, max_batches: int,
                 runtime: Runtime) -> float:
    """Answer-token-weighted mean loss over (up to `max_batches` batches of) the rows."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for b, start in enumerate(range(0, len(rows), batch_size)):
        if b >= max_batches:
            break
        batch = rows.batch(np.arange(start, min(start + batch_size, len(rows))), runtime.device)
        loss, count = sft_loss(model, batch, runtime)
        total += float(loss) * count
        n += count
    model.train(was)
    return total / max(n, 1)
