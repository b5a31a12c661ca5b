"""`mlscale run` end to end on the tiny experiment: every stage, then up to date, then a
longer pretrain that reruns pretrain, evaluate and generate only."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from mlscale.cli import main
from mlscale.experiment import load_experiment, run_experiment

from experiment_helpers import write_tiny_experiment

STAGES = ["curate", "tokenize", "pretrain", "evaluate", "generate"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny experiment run once, uninterrupted: (experiment file, output dir)."""
    root = tmp_path_factory.mktemp("tiny-run")
    toml = write_tiny_experiment(root / "experiment")
    out = root / "out"
    assert main(["run", str(toml), "--out", str(out)]) == 0
    return toml, out


def _mtimes(out: Path, stage: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (out / stage).rglob("*") if p.is_file()}


def test_experiment_runs_every_stage(tiny_run: tuple[Path, Path]) -> None:
    _, out = tiny_run
    for stage in STAGES:
        manifest = json.loads((out / stage / "manifest.json").read_text())
        assert manifest["stage"] == stage
    state = json.loads((out / "run-state.json").read_text())
    assert list(state["stages"]) == STAGES
    tokens = json.loads((out / "tokenize" / "manifest.json").read_text())
    # curated web documents and Shakespeare passages, shared between the splits
    assert tokens["splits"]["train"]["documents"] > 10 and tokens["splits"]["val"]["documents"] >= 1
    summary = json.loads((out / "pretrain" / "manifest.json").read_text())["summary"]
    assert summary["steps"] == 40
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert metrics["tokens"] > 0 and 0 < metrics["loss"] < 5.0  # learnt: below ln(84) = 4.43 of chance
    samples = json.loads((out / "generate" / "samples.json").read_text())
    assert [s["prompt"] for s in samples] == ["ROMEO:", "The "]
    assert all(t.startswith(s["prompt"]) and len(t) > len(s["prompt"]) for s in samples for t in s["samples"])
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "ROMEO:" in html


def test_experiment_rerun_is_up_to_date(tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    toml, out = tiny_run
    before = {s: _mtimes(out, s) for s in STAGES}
    report_mtime = (out / "report.html").stat().st_mtime_ns
    cfg, base, source = load_experiment(toml)
    t0 = time.perf_counter()
    result = run_experiment(cfg, out, base=base, source=source)
    assert result["ran"] == []
    assert all(d["action"] == "skip" for d in result["plan"])
    assert time.perf_counter() - t0 < 10
    assert {s: _mtimes(out, s) for s in STAGES} == before
    assert (out / "report.html").stat().st_mtime_ns == report_mtime
    printed = capsys.readouterr().out
    assert printed.count("up to date") >= len(STAGES)


def test_experiment_longer_pretrain_reruns_only_pretrain_and_after(
        tiny_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    toml, done = tiny_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    before = {s: _mtimes(out, s) for s in ("curate", "tokenize")}
    assert main(["run", str(toml), "--out", str(out), "--dry-run", "--pretrain.train.max_steps=50"]) == 0
    plan = capsys.readouterr().out
    assert "train.max_steps (40 -> 50)" in plan and "continue from the latest checkpoint" in plan
    assert main(["run", str(toml), "--out", str(out), "--pretrain.train.max_steps=50"]) == 0
    printed = capsys.readouterr().out
    state = json.loads((out / "run-state.json").read_text())
    assert state["stages"]["pretrain"]["done"]["config"]["train"]["max_steps"] == 50
    assert {s: _mtimes(out, s) for s in ("curate", "tokenize")} == before
    assert "=== curate" not in printed and "=== tokenize" not in printed
    for stage in ("pretrain", "evaluate", "generate"):
        assert f"=== {stage}" in printed
    # continued from step 40's checkpoint, not retrained from step 0
    assert "resuming" in printed and "steps 41..50" in printed
    assert json.loads((out / "evaluate" / "metrics.json").read_text())["step"] == 50


def test_experiment_dry_run_and_from_change_nothing(tiny_run: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    toml, done = tiny_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    state = (out / "run-state.json").read_bytes()
    assert main(["run", str(toml), "--out", str(out), "--dry-run", "--from", "evaluate",
                 "--curate.near.threshold=0.7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    plan = {line.split()[0]: line for line in lines[1:]}
    assert "changed: near.threshold (0.8 -> 0.7)" in plan["curate"]
    assert "its input changes: curate runs first" in plan["pretrain"]
    assert "forced by --from evaluate" in plan["generate"]
    assert (out / "run-state.json").read_bytes() == state
