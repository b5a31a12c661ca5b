"""BatchNorm over the global batch of data-parallel ranks, on any device.

Under data parallelism each rank sees a slice of the batch; plain BatchNorm would
normalise each slice by its own statistics, so the run would differ from one process
training on the whole batch. torch's SyncBatchNorm fixes that on GPUs only; this is the
same idea for every backend (gloo on CPU included): the per-channel sums of x and x^2
and the count are summed over the ranks with a differentiable all-reduce, so forward and
backward are those of one BatchNorm over the global batch.

`sync_batch_norm(model, group)` turns every BatchNorm of a built model into
`GlobalBatchNorm` in place (the class swap of `mlscale.model.swap`: parameters, buffers
and state-dict keys unchanged); the parallel layer calls it before wrapping for data
parallelism. Evaluation uses the running statistics, as BatchNorm does.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mlscale.model.swap import swap_classes


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose backward is all_reduce(SUM) of the gradient: every rank's
    loss depends on every rank's statistics."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = x.clone()
        torch.distributed.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


class _GlobalBatchNorm:
    """Mixin: training-mode statistics over the ranks of `self.group`."""

    group: Any = None

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        bn: Any = self
        if not bn.training or self.group is None or not bn.track_running_stats:
            return super().forward(x)  # type: ignore[misc]
        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() // C)])
        total = _SumOverRanks.apply(local, self.group)
        n = total[-1]
        mean = total[:C] / n
        shape = (1, C) + (1,) * (x.dim() - 2)
        # a second pass for the variance: E[x^2] - mean^2 loses digits when the mean is
        # large next to the spread (e.g. after a linear layer without bias)
        var = _SumOverRanks.apply(((x - mean.view(shape)) ** 2).sum(dims), self.group) / n
        with torch.no_grad():
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked + 1)
            bn.running_mean.lerp_(mean, m)
            bn.running_var.lerp_(var * n / (n - 1).clamp_min(1), m)  # unbiased, as BatchNorm keeps it
            bn.num_batches_tracked.add_(1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
        return y * bn.weight.view(shape) + bn.bias.view(shape) if bn.affine else y


class GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    """BatchNorm1d over the global batch."""


class GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    """BatchNorm2d over the global batch."""


class GlobalBatchNorm3d(_GlobalBatchNorm, nn.BatchNorm3d):
    """BatchNorm3d over the global batch."""


_SWAPS: dict[type, type] = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d,
                            nn.BatchNorm3d: GlobalBatchNorm3d}


def sync_batch_norm(model: nn.Module, group: Any) -> int:
    """Make every BatchNorm of `model` compute training statistics over the ranks of the
    process `group`; returns how many were converted."""
    n = swap_classes(model, _SWAPS)
    for module in model.modules():
        if isinstance(module, _GlobalBatchNorm):
            module.group = group
    return n
