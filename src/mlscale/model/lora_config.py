"""Shape of LoRA adapters (Hu et al. 2021); the modules live in `mlscale.model.lora`.

Kept apart from the modules because it imports no torch: the fine-tuning config (read by
`mlscale --help`) holds one.
"""
from __future__ import annotations

from dataclasses import dataclass

from mlscale.config import option
from mlscale.errors import ConfigError
from mlscale.model.registry import get_family

# LoRA target short name -> module inside a block: the Llama family's (q, k, v, o, gate,
# up, down); another family maps the short names it supports in its own `lora_targets`
TARGETS: dict[str, str] = get_family("llama").lora_targets


@dataclass
class LoraConfig:
    """Shape of the LoRA adapters (Hu et al. 2021)."""

    r: int = option(8, "rank of the low-rank update", min=1)
    alpha: float = option(16.0, "scaling numerator: the update is multiplied by alpha / r", min=0.0)
    dropout: float = option(0.0, "dropout on the adapter's input (training only)", min=0.0, max=1.0)
    targets: list[str] = option(["q", "k", "v", "o", "gate", "up", "down"],
                                "projections that get an adapter", choices=tuple(TARGETS))

    def validate(self) -> None:
        if not self.targets:
            raise ConfigError("lora.targets is empty; name at least one of " + ",".join(TARGETS))
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"lora.targets lists a projection twice: {','.join(self.targets)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r
