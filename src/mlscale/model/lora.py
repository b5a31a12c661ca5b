"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update.

    y = W x + (alpha / r) * B A dropout(x),   A: r x in,  B: out x r

B starts at zero, so a fresh adapter leaves the model unchanged; A starts as PEFT starts
it (Kaiming-uniform with a = sqrt(5), the nn.Linear default), so gradients flow into B
from the first step. Adapters may sit on any subset of the seven LLaMA projections
(q, k, v, o, gate, up, down); the base weight may be an nn.Linear or an NF4 `Linear4bit`
(QLoRA). An adapter can be merged into its base weight (W += scale * B A) for inference
and unmerged again, disabled (the base model exactly), saved on its own in PEFT's file
layout (adapter_model.safetensors + adapter_config.json) and loaded back.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from mlscale.errors import ArtifactError
from mlscale.model.lora_config import TARGETS, LoraConfig
from mlscale.model.quant import Linear4bit
from mlscale.model.registry import family_of

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# PEFT's target_modules name the projection alone (q_proj), not its path in the block
_PROJ_TO_SHORT = {module.rpartition(".")[2]: short for short, module in TARGETS.items()}
# our sub-layer names -> Hugging Face Llama's
_HF_SUBLAYER = {"attn": "self_attn", "mlp": "mlp"}


class LoRALinear(nn.Module):
    """`base(x) + scaling * lora_B(lora_A(dropout(x)))`; `base` stays frozen."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, (nn.Linear, Linear4bit)):
            raise TypeError(f"LoRA wraps nn.Linear or Linear4bit, not {type(base).__name__}")
        self.base = base
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        device = base.packed.device if isinstance(base, Linear4bit) else base.weight.device
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.reset_lora_parameters()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def reset_lora_parameters(self) -> None:
        """PEFT's default init: A Kaiming-uniform (a = sqrt 5), B zero."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to the base weight: scaling * B @ A."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or self.disabled:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (nn.Linear bases only)."""
        if self.merged:
            return
        if not isinstance(self.base, nn.Linear):
            raise ArtifactError("an adapter on a 4-bit base cannot be merged in place; "
                                "use merge_and_unload(), which dequantises the base first")
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again, restoring the base weight (up to rounding)."""
        if not self.merged:
            return
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def merged_linear(self) -> nn.Linear:
        """A plain nn.Linear holding base + update (dequantising a 4-bit base)."""
        with torch.no_grad():
            if isinstance(self.base, Linear4bit):
                weight = self.base.dequantized_weight(torch.float32)
            else:
                weight = self.base.weight.detach().clone()
                if self.merged:
                    weight -= self.delta_weight().to(weight.dtype)
            out = nn.Linear(self.in_features, self.out_features, bias=False,
                            device=weight.device, dtype=weight.dtype)
            out.weight.copy_(weight + self.delta_weight().to(weight.dtype))
        return out

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


# ------------------------------------------------------------------------------ model ops
def target_names(model: nn.Module, targets: list[str]) -> list[str]:
    """Module names (`blocks.{i}.attn.q_proj`, ...) of the requested projections: the
    family's `lora_targets` inside each block."""
    family = family_of(getattr(model, "cfg", None))
    unknown = [t for t in targets if t not in family.lora_targets]
    if unknown:
        raise ArtifactError(f"lora.targets {unknown}: the {family.name} family has no such "
                            f"projections ({', '.join(family.lora_targets)})")
    return [f"blocks.{i}.{family.lora_targets[t]}" for i in range(len(model.blocks)) for t in targets]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Freeze every parameter of `model` and wrap the target projections with LoRA.

    Returns the wrapped module names. A projection already quantised (Linear4bit) is
    wrapped as it is: that is QLoRA.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    names = target_names(model, cfg.targets)
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, LoRALinear):
            raise ArtifactError(f"{name} already carries a LoRA adapter")
        _set_module(model, name, LoRALinear(module, cfg.r, cfg.alpha, cfg.dropout))
    return names


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter into its base weight (faster inference; reversible)."""
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Replace every LoRA layer by a plain nn.Linear with the merged weight, in place.

    4-bit bases are dequantised; the result is an ordinary model (e.g. for HF export).
    """
    for name, layer in list(lora_layers(model)):
        _set_module(model, name, layer.merged_linear())
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes with its base weights only (e.g. the DPO reference)."""
    layers = [layer for _, layer in lora_layers(model)]
    was_merged = [layer.merged for layer in layers]
    for layer in layers:
        layer.unmerge()
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, merged in zip(layers, was_merged):
            layer.disabled = False
            if merged:
                layer.merge()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their logical size."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, Linear4bit))
    return trainable, total


# ------------------------------------------------------------------------- PEFT file layout
def peft_module_name(name: str) -> str:
    """`blocks.3.attn.q_proj` -> `base_model.model.model.layers.3.self_attn.q_proj` (PEFT's prefix)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(attn|mlp)\.(\w+)", name)
    if m is None:
        raise ValueError(f"not a LoRA target module name: {name}")
    return f"base_model.model.model.layers.{m[1]}.{_HF_SUBLAYER[m[2]]}.{m[3]}"


def our_module_name(peft_name: str) -> str:
    """Inverse of `peft_module_name`."""
    m = re.fullmatch(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)", peft_name)
    if m is None:
        raise ValueError(f"not a PEFT LoRA module name: {peft_name}")
    sub = {v: k for k, v in _HF_SUBLAYER.items()}[m[2]]
    return f"blocks.{m[1]}.{sub}.{m[3]}"


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights alone, under PEFT's key names (`...q_proj.lora_A.weight`)."""
    from torch.distributed.tensor import DTensor

    def whole(w: torch.Tensor) -> torch.Tensor:  # FSDP shards: gathered (collective)
        return (w.full_tensor() if isinstance(w, DTensor) else w).detach().float().cpu().contiguous()

    out = {}
    for name, layer in lora_layers(model):
        prefix = peft_module_name(name)
        out[f"{prefix}.lora_A.weight"] = whole(layer.lora_A.weight)
        out[f"{prefix}.lora_B.weight"] = whole(layer.lora_B.weight)
    return out


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Copy PEFT-named adapter weights into the model's LoRA layers; every key must match."""
    layers = dict(lora_layers(model))
    seen = set()
    for key, tensor in state.items():
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight", key)
        if m is None:
            raise ArtifactError(f"{source}: unexpected tensor {key!r} (not a LoRA A/B weight)")
        try:
            name = our_module_name(m[1])
        except ValueError:
            raise ArtifactError(f"{source}: tensor {key!r} names no layer of this model") from None
        if name not in layers:
            raise ArtifactError(f"{source}: tensor {key!r} has no LoRA layer {name} in this model")
        param = getattr(layers[name], m[2]).weight
        if tuple(param.shape) != tuple(tensor.shape):
            raise ArtifactError(f"{source}: {key} has shape {tuple(tensor.shape)}, the model "
                                f"expects {tuple(param.shape)} (another base model or rank?)")
        with torch.no_grad():
            param.copy_(tensor.to(param.dtype))
        seen.add((name, m[2]))
    missing = [f"{n}.{w}" for n in layers for w in ("lora_A", "lora_B") if (n, w) not in seen]
    if missing:
        raise ArtifactError(f"{source}: no weights for {', '.join(missing[:4])}"
                            + (" ..." if len(missing) > 4 else ""))


def peft_adapter_config(cfg: LoraConfig, base_model_name_or_path: str) -> dict:
    """adapter_config.json as PEFT's LoraConfig writes it (the fields that matter here)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": [TARGETS[t].rpartition(".")[2] for t in cfg.targets],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
    }


def lora_config_from_peft(data: dict, source: str = ADAPTER_CONFIG) -> LoraConfig:
    """Read r / alpha / dropout / targets back from a PEFT adapter_config.json."""
    if data.get("peft_type", "LORA") != "LORA":
        raise ArtifactError(f"{source}: peft_type is {data.get('peft_type')!r}; only LORA adapters load here")
    for key in ("use_dora", "use_rslora"):
        if data.get(key):
            raise ArtifactError(f"{source}: {key}=true is not supported; only plain LoRA adapters load here")
    if data.get("rank_pattern") or data.get("alpha_pattern"):
        raise ArtifactError(f"{source}: per-layer rank_pattern/alpha_pattern is not supported")
    modules = data.get("target_modules") or []
    if isinstance(modules, str):
        raise ArtifactError(f"{source}: target_modules as a regex is not supported; list the projections")
    unknown = [m for m in modules if m not in _PROJ_TO_SHORT]
    if unknown:
        raise ArtifactError(f"{source}: target_modules {unknown} are not LLaMA projections "
                            f"({', '.join(_PROJ_TO_SHORT)})")
    try:
        return LoraConfig(r=int(data["r"]), alpha=float(data["lora_alpha"]),
                          dropout=float(data.get("lora_dropout", 0.0)),
                          targets=[_PROJ_TO_SHORT[m] for m in modules])
    except KeyError as e:
        raise ArtifactError(f"{source}: missing field {e.args[0]!r}") from None


def save_adapter(model: nn.Module, cfg: LoraConfig, out_dir: str | Path,
                 base_model_name_or_path: str = "", state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write adapter_model.safetensors and adapter_config.json (PEFT layout) into `out_dir`.

    state: the `lora_state_dict(model)` already gathered (under FSDP every rank gathers,
    one writes)."""
    from safetensors.torch import save_file

    from mlscale.artifacts import atomic_path, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
        save_file(state if state is not None else lora_state_dict(model), str(tmp), metadata={"format": "pt"})
    atomic_write_json(out / ADAPTER_CONFIG, peft_adapter_config(cfg, base_model_name_or_path))
    return out


def read_adapter(adapter_dir: str | Path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """The LoraConfig and the weights of a saved (ours or PEFT's) adapter directory."""
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    cfg_path, weights_path = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise ArtifactError(f"{p} not found: {d} is not a LoRA adapter directory")
    try:
        data = json.loads(cfg_path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{cfg_path} is not valid JSON ({e})") from None
    return lora_config_from_peft(data, str(cfg_path)), load_file(str(weights_path))


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> LoraConfig:
    """Wrap `model` with the adapter saved in `adapter_dir` and load its weights."""
    cfg, state = read_adapter(adapter_dir)
    apply_lora(model, cfg)
    load_lora_state_dict(model, state, str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    return cfg
