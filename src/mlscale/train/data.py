"""Kinds of training data: `data.kind` names one, and with it the dataclass of `data`.

    tokens    a token directory of `mlscale tokenize` (the lm task)
    records   a JSONL file of instructions, chats or preference pairs (sft, dpo)

A task lists the kinds it reads (`Task.data_kinds`). Kinds register with their config
dataclass when their module is imported (SHIPPED), so a data stage above the trainer can
add one without the trainer importing it.
"""
from __future__ import annotations

import difflib
import importlib

from mlscale.errors import ConfigError

# kinds that ship with mlscale: name -> module that registers it on import
SHIPPED: dict[str, str] = {"tokens": "mlscale.train.config", "records": "mlscale.finetune.config"}

_KINDS: dict[str, type] = {}


def register_data_kind(name: str, config_cls: type) -> type:
    """Add (or replace) a kind of data and the dataclass of its `data` section."""
    _KINDS[name] = config_cls
    return config_cls


def data_kinds() -> list[str]:
    return sorted(set(_KINDS) | set(SHIPPED))


def data_config_class(kind: str) -> type:
    """The config dataclass of data kind `kind` (what `data.kind` selects)."""
    if kind not in _KINDS and kind in SHIPPED:
        importlib.import_module(SHIPPED[kind])
    if kind not in _KINDS:
        close = difflib.get_close_matches(kind, data_kinds(), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"data.kind: unknown kind of data '{kind}'{hint} (available: {', '.join(data_kinds())})")
    return _KINDS[kind]
