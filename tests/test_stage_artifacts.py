"""Stage directories: atomic writes, markers, config mismatch, manifests."""
from __future__ import annotations

import json

import pytest

from mlscale.artifacts import StageDir, atomic_path, atomic_write_json, fingerprint_paths, read_json
from mlscale.errors import ArtifactError


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_stage_dir_resume_and_mismatch(tmp_path):
    out = tmp_path / "out"
    sd = StageDir.open(out, "curate", {"a": 1}, {"in.txt": "h1"})
    assert not sd.complete
    sd.mark_done("unit-0", {"n": 3})
    again = StageDir.open(out, "curate", {"a": 1}, {"in.txt": "h1"})
    assert again.unit_done("unit-0") and again.unit_payload("unit-0") == {"n": 3}
    assert again.done_units() == ["unit-0"]
    again.write_manifest({"kept": 3})
    assert StageDir.open(out, "curate", {"a": 1}, {"in.txt": "h1"}).complete
    with pytest.raises(ArtifactError, match=r"config a: 1 -> 2.*--force"):
        StageDir.open(out, "curate", {"a": 2}, {"in.txt": "h1"})
    with pytest.raises(ArtifactError, match="inputs changed: in.txt"):
        StageDir.open(out, "curate", {"a": 1}, {"in.txt": "h2"})
    with pytest.raises(ArtifactError, match="holds the output of 'curate'"):
        StageDir.open(out, "tokenize", {"a": 1}, {"in.txt": "h1"})
    fresh = StageDir.open(out, "curate", {"a": 2}, {}, force=True)
    assert not fresh.complete and fresh.done_units() == []


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="is not a mlscale curate output"):
        StageDir.open(tmp_path, "curate", {}, {})
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_corrupt_json_is_named(tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="m.json is corrupt"):
        read_json(tmp_path / "m.json")


def test_fingerprints_skip_hidden_bookkeeping(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / ".done").mkdir()
    (tmp_path / ".done" / "u").write_text("{}")
    fp = fingerprint_paths([tmp_path])
    assert list(fp) == [str(tmp_path / "a.txt")]
    (tmp_path / "a.txt").write_text("y")
    assert fingerprint_paths([tmp_path]) != fp


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "m.json", {})
        with atomic_path(tmp_path / "w.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(mask)
    for name in ("m.json", "w.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
