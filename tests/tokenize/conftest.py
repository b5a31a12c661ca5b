"""Shared fixtures of the tokenize tests: real text from ../shared/data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
CC_JSONL = SHARED / "commoncrawl" / "cc_en_head-0091.jsonl"


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    assert SHAKESPEARE.is_file(), f"shared data missing: {SHAKESPEARE}"
    return SHAKESPEARE


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare: Path) -> str:
    with open(shakespeare, encoding="utf-8", newline="") as fh:
        return fh.read()


@pytest.fixture(scope="session")
def cc_records() -> list[dict]:
    """The real CCNet documents (id, text) of the commoncrawl sample."""
    assert CC_JSONL.is_file(), f"shared data missing: {CC_JSONL}"
    with open(CC_JSONL, encoding="utf-8") as fh:
        return [{"id": r["id"], "text": r["text"]} for r in map(json.loads, fh)]


@pytest.fixture(scope="session")
def cc_jsonl(tmp_path_factory: pytest.TempPathFactory, cc_records: list[dict]) -> Path:
    """A JSONL of the commoncrawl documents (id, text)."""
    path = tmp_path_factory.mktemp("cc") / "cc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in cc_records), encoding="utf-8")
    return path

