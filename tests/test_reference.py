"""README's configuration reference is generated from the config dataclasses."""
from __future__ import annotations

from pathlib import Path

from mlscale.reference import START, render, replace_block

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_reference_is_in_sync():
    text = README.read_text()
    assert START in text
    assert replace_block(text, render()) == text, (
        "README.md's configuration reference is stale: run `python -m mlscale.reference --write`")


def test_reference_covers_every_stage_key():
    block = render()
    for key in ("`train.max_steps`", "`model.n_kv_head`", "`near.threshold`", "`lora.r`"):
        assert key in block, key
