"""Kinds of training data: `data.kind` names one, and with it the dataclass of `data`.

    tokens    a token directory of `mlscale tokenize` (the lm task)
    images    an image directory of `mlscale images` (classify)
    records   a JSONL file of instructions, chats or preference pairs (sft, dpo)

A task lists the kinds it reads (`Task.data_kinds`). Kinds register with their config
dataclass when their module is imported (SHIPPED), so a data stage above the trainer can
add one without the trainer importing it.
"""
from __future__ import annotations

from mlscale.registry import Registry

# kinds that ship with mlscale: name -> module that registers it on import
SHIPPED: dict[str, str] = {"tokens": "mlscale.train.config", "images": "mlscale.train.config",
                           "records": "mlscale.finetune.config"}

DATA_KINDS: Registry[type] = Registry("data.kind", "kind of data", SHIPPED)


def register_data_kind(name: str, config_cls: type) -> type:
    """Add (or replace) a kind of data and the dataclass of its `data` section."""
    return DATA_KINDS.register(name, config_cls)


def data_kinds() -> list[str]:
    return DATA_KINDS.names()


def data_config_class(kind: str) -> type:
    """The config dataclass of data kind `kind` (what `data.kind` selects)."""
    return DATA_KINDS.get(kind)
