"""AdamW with nanoGPT's parameter groups: 2-D weights decay, everything else does not."""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from mlscale.train.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float,
                     no_weight_decay: Callable[[str, nn.Parameter], bool] | None = None) -> list[dict]:
    """Split trainable parameters into a decayed group (matrices: linear weights and
    embeddings, as nanoGPT) and an undecayed one (norm gains, biases).

    Decaying a norm gain pulls it towards 0 and so shrinks the whole activation, which is
    not the regulariser intended; matrices are what weight decay is meant for. A tied
    embedding / output matrix appears once (named_parameters deduplicates shared tensors).
    `no_weight_decay(name, param)`: the model family's own rule, when it has one (e.g.
    position embeddings and class tokens of a ViT).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = no_weight_decay(name, p) if no_weight_decay is not None else p.dim() < 2
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "decays": True},
        {"params": no_decay, "weight_decay": 0.0, "decays": False},
    ]


def _fused_supported(device_type: str) -> bool:
    """torch's fused AdamW kernel exists for CUDA, and in recent releases for CPU and MPS."""
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    if device_type == "cuda":
        return True
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return device_type in ("cpu", "mps") and (major, minor) >= (2, 4)


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    no_weight_decay: Callable[[str, nn.Parameter], bool] | None = None) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`, with the fused kernel where this torch has one.

    Tensor parallelism without FSDP leaves plain parameters (embeddings, norms) beside
    DTensor ones in one group; the fused and foreach kernels refuse such a mix, so those
    models step one tensor at a time (same arithmetic).
    """
    from torch.distributed.tensor import DTensor

    groups = parameter_groups(model, cfg.weight_decay, no_weight_decay)
    device_type = next(model.parameters()).device.type
    kinds = {isinstance(p, DTensor) and p.device_mesh for p in model.parameters() if p.requires_grad}
    kwargs: dict = {}
    if len(kinds) > 1:
        kwargs.update(foreach=False, fused=False)
    elif _fused_supported(device_type):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kwargs)
