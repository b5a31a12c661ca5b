"""Model families: what the trainer, the exporters and the fine-tuners need to know of one.

A family is a folder under `mlscale/model/` (its model file, config dataclass, parallel
plan and Hugging Face adapter) that registers one `ModelFamily` here. `model.family` in a
config names it; nothing outside the family's folder builds its model directly.

    family = get_family("llama")
    model = family.build(cfg.model)             # single-device, initialised from torch's seed
    family.flops_per_sample(cfg.model, model)   # training FLOPs per unit (token, image)

Families register when their package is imported; `get_family` imports the shipped ones
on first use, and a test (or a user's plugin) may `register_family` its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from mlscale.registry import Registry

if TYPE_CHECKING:  # torch stays unimported until a model is built: `mlscale --help` is fast
    from torch import nn

# families that ship with mlscale: name -> module that registers it on import
SHIPPED: dict[str, str] = {"llama": "mlscale.model.llama", "vit": "mlscale.model.vit"}


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """The usual rule (nanoGPT, timm): vectors (norm gains, biases) are not decayed."""
    return param.dim() < 2


@dataclass(frozen=True)
class ModelFamily:
    """One model family and the hooks that let generic code work with it.

    name              the `model.family` value
    config_cls        its config dataclass (has a `family` field holding `name`)
    build             config -> freshly initialised single-device model
    blocks            model -> its repeated blocks (activation checkpointing, per-block
                      compile and FSDP wrapping go through them)
    flops_per_sample  (config, model) -> training FLOPs per unit (token, image, ...),
                      counting active parameters only
    tp_plan           module names inside a block -> "colwise" | "rowwise" (Megatron
                      splits); empty: the family has no tensor-parallel plan
    tp_shard          (block, tp degree) -> None: adjust per-rank head counts after the
                      split, and refuse shapes the degree does not divide
    lora_targets      short name (q, k, v, ...) -> module-name suffix inside a block
    no_weight_decay   (parameter name, parameter) -> True if AdamW must not decay it
    hf                the Hugging Face adapter (import/export), or None: an object with
                      hf_state_dict(model, dtype), hf_config(cfg, bos_id=, eos_id=,
                      pad_id=, dtype=), load_hf(dir, seq_len=None) -> (model, cfg) and
                      weight_files(dir) (see mlscale.model.llama.hf)
    fuse_cpu          model -> number of modules swapped: replace modules in place by
                      subclasses that run fused CPU kernels where they apply (same
                      parameters and state dict); None: the family has none. Applied after
                      build (and loading weights), before adapters and parallelism
    """

    name: str
    config_cls: type
    build: Callable[[Any], nn.Module]
    blocks: Callable[[nn.Module], list[nn.Module]]
    flops_per_sample: Callable[[Any, nn.Module], float]
    tp_plan: dict[str, str] = field(default_factory=dict)
    tp_shard: Callable[[nn.Module, int], None] | None = None
    lora_targets: dict[str, str] = field(default_factory=dict)
    no_weight_decay: Callable[[str, nn.Parameter], bool] = _no_weight_decay
    hf: Any = None
    fuse_cpu: Callable[[nn.Module], int] | None = None


FAMILIES: Registry[ModelFamily] = Registry("model.family", "family", SHIPPED)


def register_family(family: ModelFamily) -> ModelFamily:
    """Add (or replace) a family; returns it, so a module can keep a reference."""
    return FAMILIES.register(family.name, family)


def family_names() -> list[str]:
    """Every family that can be named in `model.family`."""
    return FAMILIES.names()


def get_family(name: str) -> ModelFamily:
    """The family registered as `name`; an unknown name is a config error with a hint."""
    return FAMILIES.get(name)


def family_of(model_cfg: Any) -> ModelFamily:
    """The family a model config belongs to (its `family` field)."""
    return get_family(getattr(model_cfg, "family", "llama"))
