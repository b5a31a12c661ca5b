"""`mlscale run`: the whole chain (curate, tokenize, pretrain, evaluate, generate) from one
experiment file, skipping what is up to date, resuming what was interrupted, and writing
one report."""
from __future__ import annotations

from typing import Any

__all__ = ["ExperimentConfig", "load_experiment", "run_experiment"]


def __getattr__(name: str) -> Any:
    # imported on first use: `mlscale --help` loads this package and should stay fast
    if name in ("ExperimentConfig", "load_experiment"):
        from mlscale.experiment import config

        return getattr(config, name)
    if name == "run_experiment":
        from mlscale.experiment.runner import run_experiment

        return run_experiment
    raise AttributeError(name)
