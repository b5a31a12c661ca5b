"""`mlscale curate` on the command line: help that teaches, flags onto the config, one-line
errors with exit code 2, the funnel printed at the end."""
from __future__ import annotations

import json

import pytest

from mlscale.cli import main


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["curate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--sample", "--out", "--steps", "--workers", "--executor", "--on-error",
                   "--force", "examples:", "--ray.address", "--section.key=value"):
        assert needle in text, needle


def test_curate_prints_the_funnel_and_a_rerun_says_it_is_done(dedup_corpus, tmp_path, capsys):
    folder, planted = dedup_corpus
    out = tmp_path / "out"
    argv = ["curate", str(folder), "--out", str(out), "--steps", "exact,near", "--workers", "1",
            "--near.threshold", "0.7"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "exact" in printed and "near" in printed and str(out / "report.html") in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["steps"] == ["exact", "near"]
    assert manifest["config"]["near"]["threshold"] == 0.7
    assert manifest["execution"]["workers"] == 1
    assert manifest["records"] == planted["total"]
    assert main(argv) == 0
    assert "already complete" in capsys.readouterr().out


def test_sample_flag_curates_the_bundled_corpus(tmp_path, capsys):
    from mlscale.data import bundled_corpus

    out = tmp_path / "sample"
    assert main(["curate", "--sample", "--out", str(out), "--steps", "exact", "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["inputs"]) == len(bundled_corpus()) and manifest["records"] > 200


@pytest.mark.parametrize("argv, message", [
    (["curate", "--out", "o"], "no input given"),
    (["curate", "x.jsonl", "--sample", "--out", "o"], "either INPUT files or --sample"),
    (["curate", "--sample", "--out", "o", "--near.treshold=0.5"], "did you mean 'near.threshold'"),
    (["curate", "--sample", "--out", "o", "--steps", "extract,dedup"], "'dedup' is not one of"),
    (["curate", "--sample", "--out", "o", "--workers", "-1"], "workers: -1 is below"),
])
def test_user_errors_are_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
