"""Swapping a built model's modules for faster subclasses, from outside the model file.

A family's fused path (e.g. `llama/fused.py`, `vit/fused.py`) turns modules into
subclasses in place (the `__class__` swap FSDP2 uses too): parameters, buffers, hooks
and state-dict keys stay exactly as they were; only `forward` changes, and each forward
falls back to the model's own code where the fast path does not apply.
"""
from __future__ import annotations

from torch import nn


def plain_linears(*linears: nn.Module) -> bool:
    """True when the projections are untouched nn.Linear layers, so their weights may be
    concatenated into one matrix multiply. LoRA or quantised replacements, and modules
    with hooks or DTensor weights (tensor parallelism, FSDP), take the module path."""
    return all(type(m) is nn.Linear and type(m.weight) is nn.Parameter
               and not m._forward_hooks and not m._forward_pre_hooks for m in linears)


def swap_classes(model: nn.Module, swaps: dict[type, type]) -> int:
    """Turn every module whose exact class is a key of `swaps` into its value, in place;
    returns how many were swapped (0 when applied a second time). Exact types, so a module
    swapped (or subclassed by someone else) is left as it is."""
    n = 0
    for module in model.modules():
        fused = swaps.get(type(module))
        if fused is not None:
            module.__class__ = fused
            n += 1
    return n
