"""`ExperimentStages`: what the runner needs from a kind of experiment.

An experiment is an ordered list of stages, each writing OUT/<stage>/. For each stage the
kind says what it is keyed by (its config and the fingerprints of its inputs, which decide
whether it is up to date: plan.py) and how to run it; at the end it writes OUT/report.html.
language.py (curate -> tokenize -> pretrain -> ...) and vision.py (images -> train ->
evaluate) are the two kinds.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from mlscale.artifacts import StageDir
from mlscale.experiment.plan import RunState, StageSpec, output_fingerprint

REPORT = "report.html"


class ExperimentStages(ABC):
    """The stages of one experiment config, writing into `out`."""

    stages: list[str]

    def __init__(self, cfg: Any, out: Path):
        self.cfg, self.out = cfg, out

    @abstractmethod
    def config(self, stage: str) -> dict[str, Any]:
        """The settings that decide the stage's output."""

    @abstractmethod
    def inputs(self, stage: str, state: RunState) -> dict[str, Any] | None:
        """Fingerprints of what the stage reads; None while an upstream output is unknown."""

    @abstractmethod
    def write_report(self) -> None:
        """Write OUT/report.html from the stages' outputs."""

    def spec(self, stage: str, state: RunState) -> StageSpec:
        return StageSpec(stage, self.config(stage), self.inputs(stage, state))

    def run_stage(self, stage: str, mode: str) -> None:
        """Run `stage` (mode: resume, extend or restart) through its `_<stage>` method."""
        getattr(self, f"_{stage}")(mode)

    def upstream_inputs(self, stage: str, upstream: str, state: RunState) -> dict[str, Any] | None:
        """{upstream: fingerprint of its finished output}, or None while it is unknown."""
        fp = state.output(upstream)
        return None if fp is None else {upstream: fp}

    def open_stage_dir(self, stage: str, settings: dict[str, Any], upstream: str, mode: str) -> StageDir:
        """OUT/<stage>/ for a stage the runner itself writes (no command of its own keeps
        one), keyed by its settings and the fingerprint of `upstream`'s output."""
        return StageDir.open(self.out / stage, stage, settings,
                             {upstream: output_fingerprint(self.out / upstream) or ""}, force=mode == "restart")
