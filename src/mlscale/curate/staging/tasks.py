"""Every kind of work unit, by name, and the one function executors call to run any task."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from mlscale.curate.staging.exact import run_exact_dups, run_exact_keys
from mlscale.curate.staging.filtering import run_filter_unit
from mlscale.curate.staging.final import run_final_unit
from mlscale.curate.staging.near import (band_unit, run_near_band, run_near_clusters,
                                         run_near_signatures, signatures_unit)
from mlscale.curate.staging.plan import Context, FilterUnit

RUNNERS: dict[str, Callable[[Context, Any], dict[str, Any]]] = {
    "filter": run_filter_unit,
    "exact-keys": run_exact_keys,
    "exact-dups": run_exact_dups,
    "near-signatures": run_near_signatures,
    "near-band": run_near_band,
    "near-clusters": run_near_clusters,
    "final": run_final_unit,
}


@dataclass(frozen=True)
class Task:
    """One work unit: its kind, its argument, and the marker name that records it."""

    kind: str
    arg: Any = None

    @property
    def name(self) -> str:
        a = self.arg
        if self.kind == "filter":
            assert isinstance(a, FilterUnit)
            return a.name
        if self.kind == "near-signatures":
            return signatures_unit(a)
        if self.kind == "near-band":
            return band_unit(*a)
        if self.kind == "near-clusters":
            return "near-clusters"
        if self.kind == "exact-dups":
            return f"exact-dups-{a:03d}"
        return f"{self.kind}-{a:05d}"


def run_task(ctx: Context, task: Task) -> dict[str, Any]:
    """Run one task (in whatever process the executor chose) and time it."""
    start = time.perf_counter()
    result = RUNNERS[task.kind](ctx, task.arg)
    result["task_seconds"] = round(time.perf_counter() - start, 4)
    return result
