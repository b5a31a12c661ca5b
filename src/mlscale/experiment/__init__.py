"""`mlscale run`: the whole chain (curate, tokenize, pretrain, evaluate, generate) from one
experiment file, skipping what is up to date, resuming what was interrupted, and writing
one report."""
from mlscale.experiment.config import ExperimentConfig, load_experiment
from mlscale.experiment.runner import run_experiment

__all__ = ["ExperimentConfig", "load_experiment", "run_experiment"]
