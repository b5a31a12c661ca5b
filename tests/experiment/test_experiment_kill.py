"""SIGKILL `mlscale run` inside a stage, run it again: it resumes there and ends with the
same artifacts as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from mlscale.artifacts import fingerprint_file

from experiment_helpers import write_tiny_experiment

LONGER = ["--pretrain.train.max_steps=120", "--pretrain.train.checkpoint_every=20"]
# both runs in fresh processes with one thread each, so that nothing but the interruption
# differs between them (the thread count changes the order of float sums)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _artifacts(out: Path) -> dict[str, object]:
    """What must match between an interrupted and an uninterrupted run."""
    run = out / "pretrain"
    final = sorted((run / "checkpoints").iterdir())[-1]
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluation = json.loads((out / "evaluate" / "metrics.json").read_text())
    return {
        "checkpoint": final.name,
        "weights": {p.name: fingerprint_file(p) for p in sorted(final.glob("*.safetensors"))},
        "losses": [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in losses],
        "tokens": {p.name: fingerprint_file(p) for p in sorted((out / "tokenize").glob("*.bin"))},
        "kept": {p.name: fingerprint_file(p) for p in sorted((out / "curate" / "kept").glob("*.parquet"))},
        "evaluation": (evaluation["loss"], evaluation["tokens"]),
        "samples": json.loads((out / "generate" / "samples.json").read_text()),
    }


def test_experiment_sigkill_in_pretrain_then_rerun_matches_uninterrupted(tmp_path: Path) -> None:
    toml = write_tiny_experiment(tmp_path / "experiment")
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    base = [sys.executable, "-m", "mlscale", "run", str(toml), *LONGER, "--out"]
    whole = subprocess.run(base + [str(clean)], capture_output=True, text=True, timeout=300, env=ENV)
    assert whole.returncode == 0, whole.stderr[-2000:]

    cmd = base + [str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step  50/120") or line.startswith("step 50/120"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    # killed inside pretrain: after its checkpoint at step 40, before the end
    assert not (killed / "pretrain" / "manifest.json").exists()
    assert not (killed / "evaluate").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "=== curate" not in rerun.stdout and "=== tokenize" not in rerun.stdout
    assert "=== pretrain: resume (was interrupted: resume inside it)" in rerun.stdout
    assert "resuming" in rerun.stdout
    assert _artifacts(killed) == _artifacts(clean)
