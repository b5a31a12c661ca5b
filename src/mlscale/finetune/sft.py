"""Supervised instruction tuning (the `sft` task): next-token loss on the answers of
packed examples.

The prompt tokens carry target -100 (see data.py), so the mean cross entropy the model
returns is over answer tokens only; segment ids keep packed examples from attending to
each other and position ids restart for each.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mlscale.finetune.data import IGNORE, PackedRows
from mlscale.finetune.task import FinetuneTask
from mlscale.runtime import Runtime
from mlscale.runtime.device import autocast
from mlscale.train.task import register_task


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


@register_task
class InstructionTuning(FinetuneTask):
    """SFT: the mean loss over the answer tokens of each global batch.

    Under data parallelism each rank's mean is rescaled by its share of the global batch's
    answer tokens, so the averaged gradient is that of the one-process loss exactly.
    """

    name = "sft"
    objective = "sft"

    def batch(self, index: int) -> dict[str, Any]:
        rows = self.data.train
        env = self.runtime.env
        mine = self.rows(index, len(rows))
        batch = rows.batch(mine, self.runtime.device)
        if env.dp_size > 1:
            every = self.global_rows(index, len(rows))
            batch["share"] = float((rows.y[mine] != IGNORE).sum()) * env.dp_size / \
                max(int((rows.y[every] != IGNORE).sum()), 1)
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, _ = sft_loss(model, batch, self.runtime)
        if "share" in batch:
            loss = loss * batch["share"]
        return loss, {}

    def units(self, batch: dict[str, Any]) -> int:
        return int((batch["y"] != IGNORE).sum())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.data.val is None:
            return {}
        return {"val_loss": evaluate_sft(model, self.data.val, self.cfg.train.batch_size,
                                         self.cfg.train.eval_batches, self.runtime)}
