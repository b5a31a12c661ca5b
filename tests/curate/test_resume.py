"""Killed at any moment and run again, curate ends with exactly the uninterrupted output;
a finished run is a no-op; another config on an existing output is an error."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlscale.curate import pipeline
from mlscale.curate.pipeline import curate
from mlscale.errors import ArtifactError


def _descendants(pid: int) -> list[int]:
    """Child processes of `pid`, their children, and so on (workers, fork server...)."""
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return children + [d for c in children for d in _descendants(c)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _markers(out: Path) -> int:
    done = out / ".done"
    return sum(1 for p in done.iterdir() if not p.name.startswith(".")) if done.is_dir() else 0


# the stage in a process of its own, through the Python API (the CLI would also import
# every other stage's command module)
RUN = """
import sys
from mlscale.config import load_config
from mlscale.curate.config import CurateConfig
from mlscale.curate.pipeline import curate
curate([sys.argv[1]], sys.argv[2], load_config(CurateConfig, overrides=sys.argv[3:]))
"""


def _run_and_kill(folder: Path, out: Path, overrides: tuple[str, ...], after_markers: int) -> int:
    """Run curate with 2 workers in a subprocess; SIGKILL it once `after_markers` units are done."""
    cmd = [sys.executable, "-c", RUN, str(folder), str(out), "--workers=2", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while _markers(out) < after_markers and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        workers = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)  # the coordinator only: its workers must notice
        proc.wait()
        gone = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < gone:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "worker processes outlived the killed run"
    finally:
        if proc.poll() is None:  # pragma: no cover - only if an assertion above failed
            os.killpg(proc.pid, signal.SIGKILL)
    return _markers(out)


def _counts(funnel: list[dict]) -> list[dict]:
    """The funnel without its timings."""
    return [{k: (_counts(v) if k == "substeps" else v) for k, v in g.items() if k != "seconds"}
            for g in funnel]


def test_sigkill_then_rerun_gives_exactly_the_uninterrupted_output(reference, tmp_path, outputs):
    folder, ref_out, ref_manifest = reference.folder, reference.out, reference.manifest
    total_units = _markers(ref_out)
    out = tmp_path / "killed"
    # kill in the filter stage, in the dedup stages, and late in the run
    for after in (1, total_units // 2, total_units - 6):
        done = _run_and_kill(folder, out, reference.overrides, after)
        assert done >= after
        assert not (out / "manifest.json").exists(), "the run finished before the kill"
    before = {p.name: p.stat().st_mtime_ns for p in (out / ".done").iterdir()
              if not p.name.startswith(".")}  # not the temp file of a marker cut short
    assert 0 < len(before) < total_units
    manifest = curate([folder], out, reference.config())
    assert outputs.files(out) == outputs.files(ref_out)
    assert _counts(manifest["funnel"]) == _counts(ref_manifest["funnel"])
    assert (manifest["records"], manifest["kept"], manifest["removed"]) == (
        ref_manifest["records"], ref_manifest["kept"], ref_manifest["removed"])
    # completed units were skipped, not redone
    for name, mtime in before.items():
        assert (out / ".done" / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    assert not list(out.rglob(".*.tmp")), "temporary files of killed writes were left behind"


def test_rerun_of_a_finished_run_is_a_noop(reference):
    out, manifest = reference.out, reference.manifest
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = curate([reference.folder], out, reference.config("--workers=2"))  # may change
    assert again == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def test_another_config_is_an_error_naming_the_key_and_force_starts_over(reference, tmp_path,
                                                                       outputs):
    folder, ref_out = reference.folder, reference.out
    out = tmp_path / "copy"
    shutil.copytree(ref_out, out)
    with pytest.raises(ArtifactError, match=r"near\.threshold: 0\.8 -> 0\.7.*--force"):
        curate([folder], out, reference.config("--near.threshold=0.7"))
    assert outputs.files(out) == outputs.files(ref_out), "a refused run changed the output"
    manifest = curate([folder], out, reference.config("--near.threshold=0.7"), force=True)
    assert manifest["config"]["near"]["threshold"] == 0.7
    assert manifest["records"] == manifest["kept"] + manifest["removed"]


def test_a_stale_intermediate_file_is_named_with_what_to_redo(reference, tmp_path, monkeypatch,
                                                              outputs):
    folder, ref_out, config = reference.folder, reference.out, reference.config
    out = tmp_path / "stale"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed after the last unit, before the manifest

    monkeypatch.setattr(pipeline, "write_report", stop)
    with pytest.raises(KeyboardInterrupt):
        curate([folder], out, config())
    monkeypatch.undo()
    # a truncated shard, read again by the final stage of shard 1
    shard = out / ".work" / "docs" / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (out / ".done" / "final-00001").unlink()
    with pytest.raises(ArtifactError) as err:
        curate([folder], out, config())
    message = str(err.value)
    assert str(shard) in message and str(out / ".done" / "filter-00001") in message
    # an array of the wrong shape, read by the near clusters unit
    pairs = out / ".work" / "near" / "pairs-b00-p000.npy"
    np.save(pairs, np.zeros((3,), dtype=np.int64))
    (out / ".done" / "near-clusters").unlink()
    # following the instructions repairs the run
    (out / ".done" / "filter-00001").unlink()
    with pytest.raises(ArtifactError, match=r"pairs-b00-p000\.npy is stale.*near-band-00-000"):
        curate([folder], out, config())
    (out / ".done" / "near-band-00-000").unlink()
    curate([folder], out, config())
    assert outputs.files(out) == outputs.files(ref_out)
