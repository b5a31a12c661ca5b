"""Name -> implementation tables that configs select from (model families, tasks, kinds
of data), with the shipped entries imported on first use and clear errors for the rest.

    FAMILIES = Registry("model.family", "family", shipped={"llama": "mlscale.model.llama"})
    FAMILIES.register("llama", family)      # done by the shipped module when imported
    FAMILIES.get("lama")                     # ConfigError: ... did you mean 'llama'?

A shipped entry's module registers it when imported, so a table may hold entries from
packages above the one that reads it without importing them.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Generic, TypeVar

from mlscale.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A table of named entries, selected by the config key `key`."""

    def __init__(self, key: str, what: str, shipped: dict[str, str]):
        self.key, self.what, self.shipped = key, what, dict(shipped)
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add (or replace) `name`; returns the entry, so it can serve as a decorator's result."""
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """Every name that can be selected (registered or shipped)."""
        return sorted(set(self._entries) | set(self.shipped))

    def get(self, name: str) -> T:
        """The entry named `name`; an unknown name is a config error naming the closest one."""
        if name not in self._entries and name in self.shipped:
            importlib.import_module(self.shipped[name])
        if name not in self._entries:
            close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{self.key}: unknown {self.what} '{name}'{hint} "
                              f"(available: {', '.join(self.names())})")
        return self._entries[name]
