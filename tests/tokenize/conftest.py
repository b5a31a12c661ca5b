"""Shared fixtures of the tokenize tests: real text from the bundled sample (sample_data)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sample_data import ccnet_bytes, write_shakespeare


@pytest.fixture(scope="session")
def shakespeare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny Shakespeare as a plain text file (input.txt)."""
    return write_shakespeare(tmp_path_factory.mktemp("shakespeare") / "input.txt")


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare: Path) -> str:
    with open(shakespeare, encoding="utf-8", newline="") as fh:
        return fh.read()


@pytest.fixture(scope="session")
def cc_records() -> list[dict]:
    """The real CCNet documents (id, text) of the commoncrawl sample."""
    lines = ccnet_bytes().split(b"\n")[:-1]  # one JSON object a line, each ended by \n
    return [{"id": r["id"], "text": r["text"]} for r in map(json.loads, lines)]


@pytest.fixture(scope="session")
def cc_jsonl(tmp_path_factory: pytest.TempPathFactory, cc_records: list[dict]) -> Path:
    """A JSONL of the commoncrawl documents (id, text)."""
    path = tmp_path_factory.mktemp("cc") / "cc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in cc_records), encoding="utf-8")
    return path

