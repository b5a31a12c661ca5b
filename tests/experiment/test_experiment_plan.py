"""What is up to date, what reruns and why (plan.decide) and the passages of plain text."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from mlscale.artifacts import fingerprint_file
from mlscale.experiment.passages import passages, write_passages
from mlscale.experiment.plan import RunState, StageSpec, decide

PRETRAIN = {"model": {"d_model": 32}, "train": {"max_steps": 40, "lr": 1e-3}}


def _finished(out: Path, spec: StageSpec) -> RunState:
    (out / spec.name).mkdir(parents=True, exist_ok=True)
    (out / spec.name / "manifest.json").write_text('{"stage": "%s"}' % spec.name)
    state = RunState(out)
    state.started(spec)
    state.finished(spec, fingerprint_file(out / spec.name / "manifest.json"), 1.0)
    return state


def test_unchanged_stage_is_up_to_date(tmp_path: Path) -> None:
    spec = StageSpec("pretrain", PRETRAIN, {"tokenize": "abc"})
    state = _finished(tmp_path, spec)
    d = decide(spec, RunState(tmp_path), tmp_path, None)
    assert (d.action, d.reason) == ("skip", "config and inputs unchanged")
    assert "up to date" in d.line()
    assert state.output("pretrain") is not None


def test_more_steps_extend_pretrain_other_changes_restart(tmp_path: Path) -> None:
    _finished(tmp_path, StageSpec("pretrain", PRETRAIN, {"tokenize": "abc"}))
    state = RunState(tmp_path)
    longer = {"model": {"d_model": 32}, "train": {"max_steps": 80, "lr": 1e-3}}
    d = decide(StageSpec("pretrain", longer, {"tokenize": "abc"}), state, tmp_path, None)
    assert (d.action, d.mode) == ("run", "extend")
    assert "train.max_steps (40 -> 80)" in d.reason
    shorter = {"model": {"d_model": 32}, "train": {"max_steps": 20, "lr": 1e-3}}
    assert decide(StageSpec("pretrain", shorter, {"tokenize": "abc"}), state, tmp_path, None).mode == "restart"
    both = {"model": {"d_model": 32}, "train": {"max_steps": 80, "lr": 2e-3}}
    d = decide(StageSpec("pretrain", both, {"tokenize": "abc"}), state, tmp_path, None)
    assert d.mode == "restart" and "train.lr (0.001 -> 0.002)" in d.reason
    # only pretrain continues from a checkpoint
    _finished(tmp_path, StageSpec("evaluate", {"train": {"max_steps": 1}}, {"pretrain": "x"}))
    d = decide(StageSpec("evaluate", {"train": {"max_steps": 2}}, {"pretrain": "x"}), RunState(tmp_path),
               tmp_path, None)
    assert d.mode == "restart"


def test_changed_inputs_missing_output_and_interruption(tmp_path: Path) -> None:
    spec = StageSpec("tokenize", {"k": 1}, {"curate": "old"})
    _finished(tmp_path, spec)
    state = RunState(tmp_path)
    d = decide(StageSpec("tokenize", {"k": 1}, {"curate": "new"}), state, tmp_path, None)
    assert (d.mode, d.reason) == ("restart", "inputs changed (curate)")
    d = decide(spec, state, tmp_path, "curate")
    assert (d.action, d.reason) == ("run", "its input changes: curate runs first")
    (tmp_path / "tokenize" / "manifest.json").unlink()
    # started and finished with this config, manifest gone: a restart that was cut short
    assert decide(spec, state, tmp_path, None).mode == "resume"
    # started with a new config and never finished: resume inside it
    new = StageSpec("tokenize", {"k": 2}, {"curate": "old"})
    state.started(new)
    d = decide(new, RunState(tmp_path), tmp_path, None)
    assert (d.mode, d.reason) == ("resume", "was interrupted: resume inside it")


def test_never_ran(tmp_path: Path) -> None:
    d = decide(StageSpec("curate", {}, {"documents": {}}), RunState(tmp_path), tmp_path, None)
    assert (d.action, d.mode, d.reason) == ("run", "restart", "never ran")
    d = decide(StageSpec("tokenize", {}, None), RunState(tmp_path), tmp_path, "curate")
    assert d.reason == "never ran"


def test_passages_rejoin_to_the_text_and_are_byte_stable(tmp_path: Path) -> None:
    text = "".join(f"SPEAKER {i}:\nline one of {i}\nline two\n\n" for i in range(300))
    parts = list(passages(text, 500))
    assert "".join(parts) == text
    assert all(p.endswith("\n\n") for p in parts) and len(parts) > 10
    assert all(len(p) >= 500 for p in parts[:-1])
    src = tmp_path / "play.txt"
    src.write_text(text)
    n = write_passages(src, tmp_path / "a.jsonl.gz", 500)
    write_passages(src, tmp_path / "b.jsonl.gz", 500)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    rows = [json.loads(line) for line in gzip.open(tmp_path / "a.jsonl.gz", "rt")]
    assert len(rows) == n == len(parts) and rows[3]["id"] == "play.txt#3"
    assert "".join(r["text"] for r in rows) == text
