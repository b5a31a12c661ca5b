"""What is up to date, what reruns and why.

The runner keeps DIR/run-state.json: for every stage what it was last *started* with and
what it last *finished* with (config, input fingerprints, a fingerprint of its manifest).
A stage is up to date when it finished with the config it has now, on the inputs it has
now, and its manifest is still the one it wrote. Otherwise it runs, and every stage after
it runs too (its input is about to change). How it runs:

    resume    it was started with exactly this config and these inputs: continue inside it
    extend    a training stage (pretrain, train) only: it finished, and only train.max_steps grew: continue from the
              latest checkpoint
    restart   anything else: delete its output and start over
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlscale.artifacts import atomic_write_json, fingerprint_file, read_json
from mlscale.config import diff

# the stages of an experiment, in the order they run
# (scaling and finetune are optional; a change reruns the stages after it, so the cheap
# finetune comes after the long sweep)
STAGES = ("curate", "tokenize", "pretrain", "evaluate", "generate", "scaling", "finetune")
# the stages of a vision experiment
VISION_STAGES = ("images", "train", "evaluate")
# training stages a larger train.max_steps continues from their latest checkpoint
EXTENDABLE = ("pretrain", "train")
STATE_FILE = "run-state.json"
MANIFEST = "manifest.json"


@dataclass
class StageSpec:
    """What a stage would run with now. `inputs` is None while an earlier stage is to run
    (its output, and so this stage's input, is not known yet)."""

    name: str
    config: dict[str, Any]
    inputs: dict[str, Any] | None


@dataclass
class Decision:
    """The plan for one stage: skip (up to date) or run, how, and why."""

    stage: str
    action: str  # "skip" | "run"
    mode: str  # "" | "resume" | "extend" | "restart"
    reason: str

    def line(self) -> str:
        what = "up to date" if self.action == "skip" else f"run ({self.mode})"
        return f"{self.stage:<9} {what:<17} {self.reason}"


class RunState:
    """DIR/run-state.json, rewritten atomically after every change."""

    def __init__(self, out: Path):
        self.path = Path(out) / STATE_FILE
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.exists():
            self.data = read_json(self.path, "run state",
                                  "choose another --out, or delete the file to plan the run afresh")

    def record(self, stage: str) -> dict[str, Any]:
        return self.data["stages"].get(stage, {})

    def started(self, spec: StageSpec) -> None:
        rec = self.data["stages"].setdefault(spec.name, {})
        rec["started"] = {"config": spec.config, "inputs": spec.inputs}
        self._save()

    def finished(self, spec: StageSpec, output: str, seconds: float) -> None:
        rec = self.data["stages"].setdefault(spec.name, {})
        rec["done"] = {"config": spec.config, "inputs": spec.inputs, "output": output,
                       "seconds": round(seconds, 3)}
        self._save()

    def output(self, stage: str) -> str | None:
        """The fingerprint of the stage's manifest as it finished, or None."""
        return self.record(stage).get("done", {}).get("output")

    def _save(self) -> None:
        atomic_write_json(self.path, self.data)


def output_fingerprint(stage_dir: Path) -> str | None:
    """The fingerprint of a finished stage's manifest; None when it has none."""
    m = Path(stage_dir) / MANIFEST
    return fingerprint_file(m) if m.is_file() else None


def _changed_keys(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """'train.lr changed (0.001 -> 0.002)', for up to `limit` keys."""
    changes = []
    for line in diff(old, new):
        key, values = line.split(": ", 1)
        changes.append(f"{key} ({values})")
    text = ", ".join(changes[:limit]) + (f" and {len(changes) - limit} more" if len(changes) > limit else "")
    return f"changed: {text}"


def _only_more_steps(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when two pretrain configs differ in train.max_steps alone, and it grew."""
    old_steps = old.get("train", {}).get("max_steps", 0)
    new_steps = new.get("train", {}).get("max_steps", 0)
    if new_steps <= old_steps:
        return False
    return diff(old, new) == [f"train.max_steps: {old_steps!r} -> {new_steps!r}"]


def decide(spec: StageSpec, state: RunState, out: Path, upstream: str | None) -> Decision:
    """The decision for one stage. `upstream` names the first earlier stage that runs."""
    rec = state.record(spec.name)
    done, started = rec.get("done"), rec.get("started")
    current = {"config": spec.config, "inputs": spec.inputs}
    resumable = started == current and spec.inputs is not None
    if upstream is not None:
        # its input is the output of a stage that runs first, so it will have changed
        return Decision(spec.name, "run", "restart", "never ran" if rec == {} else
                        f"its input changes: {upstream} runs first")
    if done is None:
        if resumable:
            return Decision(spec.name, "run", "resume", "was interrupted: resume inside it")
        return Decision(spec.name, "run", "restart", "never ran")
    if done["config"] != spec.config:
        if resumable:
            return Decision(spec.name, "run", "resume", "was interrupted: resume inside it")
        reason = _changed_keys(done["config"], spec.config)
        if spec.name in EXTENDABLE and done["inputs"] == spec.inputs \
                and _only_more_steps(done["config"], spec.config):
            return Decision(spec.name, "run", "extend", reason + ": continue from the latest checkpoint")
        return Decision(spec.name, "run", "restart", reason)
    if done["inputs"] != spec.inputs:
        if resumable:
            return Decision(spec.name, "run", "resume", "was interrupted: resume inside it")
        changed = sorted(k for k in set(done["inputs"] or {}) | set(spec.inputs or {})
                         if (done["inputs"] or {}).get(k) != (spec.inputs or {}).get(k))
        return Decision(spec.name, "run", "restart", f"inputs changed ({', '.join(changed)})")
    if output_fingerprint(out / spec.name) != done["output"]:
        if resumable:
            return Decision(spec.name, "run", "resume", "was interrupted: resume inside it")
        return Decision(spec.name, "run", "restart", f"its output {out / spec.name / MANIFEST} is "
                        "missing or was changed")
    return Decision(spec.name, "skip", "", "config and inputs unchanged")
