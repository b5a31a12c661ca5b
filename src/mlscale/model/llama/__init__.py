"""The Llama family: a LLaMA-style decoder with transformers' conventions.

    config.py     LlamaConfig (the `model` section when model.family = "llama")
    model.py      the model, single-device, read top to bottom
    parallel.py   its tensor-parallel plan
    hf.py         Hugging Face import and export
    fused.py      the fused CPU kernels, applied by a module swap

Importing this package registers the family; it imports no torch until a model is built
(configs are read by `mlscale --help`), so the model classes load on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlscale.model.llama import hf, parallel
from mlscale.model.llama.config import LlamaConfig
from mlscale.model.registry import ModelFamily, register_family

if TYPE_CHECKING:
    from torch import nn

    from mlscale.model.llama.model import KVCache, Llama

__all__ = ["FAMILY", "KVCache", "Llama", "LlamaConfig"]


def build(cfg: LlamaConfig) -> Llama:
    """A freshly initialised Llama (from torch's seed): the one place it is constructed."""
    from mlscale.model.llama.model import Llama

    return Llama(cfg)


def flops_per_sample(cfg: LlamaConfig, model: nn.Module) -> float:
    """Training FLOPs per token: 6 N + 12 L d T (see `Llama.flops_per_token`)."""
    return float(model.flops_per_token(cfg.seq_len))


def fuse_cpu(model: nn.Module) -> int:
    """The fused CPU kernels, swapped in from outside (see `fused.py`)."""
    from mlscale.model.llama.fused import apply_cpu_kernels

    return apply_cpu_kernels(model)


# LoRA target short name -> module inside a block (PEFT's target_modules are the last part)
LORA_TARGETS: dict[str, str] = {
    "q": "attn.q_proj", "k": "attn.k_proj", "v": "attn.v_proj", "o": "attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}

FAMILY = register_family(ModelFamily(
    name="llama",
    config_cls=LlamaConfig,
    build=build,
    blocks=lambda model: list(model.blocks),
    flops_per_sample=flops_per_sample,
    tp_plan=parallel.TP_PLAN,
    tp_shard=parallel.tp_shard,
    lora_targets=LORA_TARGETS,
    hf=hf,
    fuse_cpu=fuse_cpu,
))


def __getattr__(name: str) -> Any:
    # Llama and KVCache load with torch, on first use (PEP 562)
    if name in ("Llama", "KVCache"):
        from mlscale.model.llama import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
