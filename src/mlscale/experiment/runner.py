"""`run_experiment()`: the stages of an experiment, in order (language.py: curate,
tokenize, pretrain, evaluate, generate...; vision.py: images, train, evaluate).

Each stage writes DIR/<stage>/ through its own stage function (the same code as its own
command), so each resumes inside itself after an interruption. The runner adds what
lies between stages: which are up to date (plan.py), the record of what each finished
with (DIR/run-state.json), and DIR/report.html at the end.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mlscale.errors import ArtifactError, ConfigError, check_out_dir
from mlscale.experiment.plan import Decision, RunState, decide, output_fingerprint
from mlscale.experiment.stages import REPORT, ExperimentStages

LOCK = ".run.lock"


def experiment_stages(cfg: Any, out: Path, base: Path, source: str) -> ExperimentStages:
    """The stages that run an experiment config (language or vision)."""
    from mlscale.experiment.vision_config import VisionExperimentConfig

    if isinstance(cfg, VisionExperimentConfig):
        from mlscale.experiment.vision import VisionExperiment

        return VisionExperiment(cfg, out, base, source)
    from mlscale.experiment.language import LanguageExperiment

    return LanguageExperiment(cfg, out, base, source)


def _forced(exp: ExperimentStages, stage: str, from_stage: str | None) -> Decision | None:
    """The decision for a stage that --from forces (it, and every stage after it)."""
    if from_stage is None or exp.stages.index(stage) < exp.stages.index(from_stage):
        return None
    return Decision(stage, "run", "restart", f"forced by --from {from_stage}")


def plan_experiment(exp: ExperimentStages, state: RunState, from_stage: str | None) -> list[Decision]:
    """The decision for every stage, as far as can be known before anything runs."""
    decisions: list[Decision] = []
    upstream: str | None = None
    for stage in exp.stages:
        d = _forced(exp, stage, from_stage) or decide(exp.spec(stage, state), state, exp.out, upstream)
        decisions.append(d)
        if d.action == "run" and upstream is None:
            upstream = stage
    return decisions


def run_experiment(cfg: Any, out: str | Path, from_stage: str | None = None,
                   dry_run: bool = False, base: str | Path = ".", source: str = "experiment"
                   ) -> dict[str, Any]:
    """Run the stages of `cfg` (an ExperimentConfig or a VisionExperimentConfig) that are
    not up to date into `out`; returns what happened.

    `from_stage` forces that stage and those after it; `dry_run` only plans. `base` is the
    folder relative input paths are taken from, `source` the experiment's name in messages.
    """
    out = check_out_dir(out)
    exp = experiment_stages(cfg, out, Path(base), source)
    if from_stage is not None and from_stage not in exp.stages:
        raise ConfigError(f"--from {from_stage}: not a stage of this experiment "
                          f"(stages: {', '.join(exp.stages)})")
    state = RunState(out)
    decisions = plan_experiment(exp, state, from_stage)
    print(f"mlscale run: {cfg.name} -> {out}", flush=True)
    for d in decisions:
        print("  " + d.line(), flush=True)
    result: dict[str, Any] = {"out": str(out), "plan": [d.__dict__ for d in decisions], "ran": []}
    if dry_run:
        return result

    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        # read again under the lock: a run that finished meanwhile has changed it
        return _run_stages(exp, RunState(out), cfg, from_stage, result)


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold DIR/.run.lock: two runs writing one directory would corrupt each other's stages.
    The lock is the kernel's (flock), so a killed run never leaves it held."""
    import fcntl

    with open(out / LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(f"another `mlscale run` is writing {out}; wait for it to finish, "
                                "or choose another --out") from None
        yield


def _run_stages(exp: ExperimentStages, state: RunState, cfg: Any, from_stage: str | None,
                result: dict[str, Any]) -> dict[str, Any]:
    out = exp.out
    ran_any = False
    for stage in exp.stages:
        # decided again now that the stages before it have run: its inputs are known
        spec = exp.spec(stage, state)
        d = _forced(exp, stage, from_stage) or decide(spec, state, out, None)
        if d.action == "skip":
            continue
        print(f"\n=== {stage}: {d.mode} ({d.reason})", flush=True)
        t0 = time.time()
        state.started(spec)
        exp.run_stage(stage, d.mode)
        fp = output_fingerprint(out / stage)
        if fp is None:  # pragma: no cover - every stage function writes its manifest
            raise RuntimeError(f"{stage} finished without writing {out / stage / 'manifest.json'}")
        state.finished(spec, fp, time.time() - t0)
        result["ran"].append(stage)
        ran_any = True

    report = out / REPORT
    if ran_any or not report.exists():
        exp.write_report()
        print(f"\nreport: {report}", flush=True)
    else:
        print(f"\nevery stage is up to date; report: {report}", flush=True)
    result["report"] = str(report)
    return result
