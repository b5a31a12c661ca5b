"""Bad input: one clear message naming the file (and line); nothing corrupt left behind."""
from __future__ import annotations

import json

import pytest

from mlscale.config import load_config
from mlscale.curate.config import CurateConfig
from mlscale.curate.pipeline import curate
from mlscale.errors import InputError


def config(*overrides: str) -> CurateConfig:
    return load_config(CurateConfig, overrides=["--steps=exact,near", *overrides])


def _jsonl_with_a_broken_line(path):
    texts = ["the quick brown fox", "jumps over the lazy dog", "a stitch in time saves nine",
             "all that glitters is not gold", "fortune favours the bold", "still waters run deep"]
    good = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    lines = [json.dumps(r) for r in good]
    lines.insert(3, '{"id": "broken", "text": "no closing quote}')  # line 4
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def test_malformed_line_fails_naming_file_and_line_then_skip_records_it(tmp_path, outputs):
    workers = 2  # the error travels from a worker process back to the caller
    src = _jsonl_with_a_broken_line(tmp_path / "docs.jsonl")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=rf"{src}.*4"):
        curate([src], out, config(f"--workers={workers}"))
    assert not (out / "kept").exists() and not (out / "manifest.json").exists()
    # the same output folder, now skipping bad records (where and how leniently a run
    # goes may change between a run and its resumption)
    manifest = curate([src], out, config(f"--workers={workers}", "--on-error=skip"))
    kept, removed = outputs.rows(out)
    assert sorted(r["id"] for r in kept) == [f"d{i}" for i in range(6)]
    assert [(r["step"], r["reason"]) for r in removed] == [("read", "malformed")]
    assert manifest["records"] == 7 and manifest["funnel"][0]["removed"] == {"malformed": 1}


def test_missing_input_is_one_clear_message_and_creates_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="input not found: .*nowhere.jsonl"):
        curate([tmp_path / "nowhere.jsonl"], out, config())
    assert not out.exists()


def test_empty_inputs_are_one_clear_message(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        curate([empty], tmp_path / "out1", config())
    assert not (tmp_path / "out1").exists()
    folder = tmp_path / "nothing_here"
    folder.mkdir()
    with pytest.raises(InputError, match="no supported input files"):
        curate([folder], tmp_path / "out2", config())
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n\n", "utf-8")
    with pytest.raises(InputError, match="no records found"):
        curate([blank], tmp_path / "out3", config("--workers=1"))


def test_an_output_folder_that_is_not_a_curate_output_is_refused(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"text": "hello there"}) + "\n", "utf-8")
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine", "utf-8")
    from mlscale.errors import ArtifactError

    with pytest.raises(ArtifactError, match="not a mlscale curate output"):
        curate([src], out, config("--workers=1"))
    assert (out / "notes.txt").read_text("utf-8") == "mine"
