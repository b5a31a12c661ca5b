"""The ViT family: vision transformers for image classification and image features.

    config.py     ViTConfig (the `model` section when model.family = "vit")
    model.py      the model, single-device, read top to bottom
    parallel.py   its tensor-parallel plan
    fused.py      one q/k/v matmul per attention, swapped in by the trainer
    hf.py         Hugging Face import and export (ViTForImageClassification + processor)
    timm.py       timm VisionTransformer state dicts, both ways

Importing this package registers the family; it imports no torch until a model is built
(configs are read by `mlscale --help`), so the model class loads on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlscale.model.registry import ModelFamily, register_family
from mlscale.model.vit import hf, parallel
from mlscale.model.vit.config import ViTConfig

if TYPE_CHECKING:
    from torch import nn

    from mlscale.model.vit.model import ViT

__all__ = ["FAMILY", "ViT", "ViTConfig"]


def build(cfg: ViTConfig) -> ViT:
    """A freshly initialised ViT (from torch's seed): the one place it is constructed."""
    from mlscale.model.vit.model import ViT

    return ViT(cfg)


def flops_per_sample(cfg: ViTConfig, model: nn.Module) -> float:
    """Training FLOPs per image at the configured size (see `ViT.flops_per_image`)."""
    return float(model.flops_per_image(cfg.image_size))


def fuse(model: nn.Module) -> int:
    """One q/k/v matmul per attention, swapped in from outside (see `fused.py`)."""
    from mlscale.model.vit.fused import apply_fused

    return apply_fused(model)


# parameters AdamW leaves alone besides vectors (norm gains, biases, layer-scale gains): timm's rule
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token")


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """True for positions, class and register tokens, norms, biases and gains."""
    return param.dim() < 2 or name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES


# LoRA target short name -> module inside a block (PEFT's target_modules are the last part)
LORA_TARGETS: dict[str, str] = {
    "q": "attn.q_proj", "k": "attn.k_proj", "v": "attn.v_proj", "o": "attn.o_proj",
    "fc1": "mlp.fc1", "fc2": "mlp.fc2",
}

FAMILY = register_family(ModelFamily(
    name="vit",
    config_cls=ViTConfig,
    build=build,
    blocks=lambda model: list(model.blocks),
    flops_per_sample=flops_per_sample,
    tp_plan=parallel.TP_PLAN,
    tp_shard=parallel.tp_shard,
    lora_targets=LORA_TARGETS,
    no_weight_decay=no_weight_decay,
    hf=hf,
    fuse_cpu=fuse,
))


def __getattr__(name: str) -> Any:
    # ViT loads with torch, on first use (PEP 562)
    if name == "ViT":
        from mlscale.model.vit import model

        return model.ViT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
