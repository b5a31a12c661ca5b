"""Counts, timings, histograms and examples that work units report, and their merging.

A unit returns plain JSON (it is stored in the unit's completion marker); merging the
units' reports in shard order gives the run's funnel, so the totals never depend on
which worker ran what or when.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

# fixed bins, so that histograms of different units add up
LENGTH_EDGES = np.round(10 ** np.linspace(0, 7, 43), 1)  # characters, 1 .. 10^7, log-spaced
SCORE_EDGES = np.linspace(0.0, 1.0, 21)
EXAMPLE_CHARS = 1200


def histogram(values: Iterable[float], edges: np.ndarray) -> list[int]:
    """Counts per bin; values below or above the range fall into the first or last bin."""
    v = np.clip(np.asarray(list(values), dtype=np.float64), edges[0], edges[-1])
    return np.histogram(v, bins=edges)[0].astype(int).tolist()


def add_counts(a: list[int] | None, b: list[int] | None) -> list[int]:
    if not a:
        return list(b or [])
    if not b:
        return list(a)
    return [x + y for x, y in zip(a, b)]


@dataclass
class StepStats:
    """One step's funnel line: documents in and out, removal reasons, seconds."""

    name: str
    group: str
    docs_in: int = 0
    docs_out: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "in": self.docs_in,
                "out": self.docs_out, "removed": dict(sorted(self.removed.items())),
                "seconds": round(self.seconds, 4)}


def merge_steps(reports: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Add up per-unit step lists (same steps, same order) into one list."""
    merged: dict[str, dict[str, Any]] = {}
    for steps in reports:
        for s in steps:
            m = merged.setdefault(s["name"], {"name": s["name"], "group": s["group"], "in": 0,
                                              "out": 0, "removed": {}, "seconds": 0.0})
            m["in"] += s["in"]
            m["out"] += s["out"]
            m["seconds"] += s["seconds"]
            for reason, n in s["removed"].items():
                m["removed"][reason] = m["removed"].get(reason, 0) + n
    for m in merged.values():
        m["removed"] = dict(sorted(m["removed"].items()))
        m["seconds"] = round(m["seconds"], 3)
    return list(merged.values())


def example(doc_id: str, step: str, reason: str, *, text: str = "", detail: str = "",
            url: str = "", source: str = "", **extra: Any) -> dict[str, Any]:
    """One removed document, shortened, for the report."""
    short = text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " [...]"
    return {"id": doc_id, "step": step, "reason": reason, "detail": detail, "url": url,
            "source": source, "text": short, **extra}


def merge_examples(reports: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The first example of each step/reason, in shard order."""
    out: dict[str, dict[str, Any]] = {}
    for ex in reports:
        for key, value in ex.items():
            out.setdefault(key, value)
    return out
