"""Fixtures of the fine-tuning tests: a tiny base run and real instruction data."""
import json
from pathlib import Path

import pytest
import torch

from ft_helpers import SEED_TASKS, make_run, write_jsonl


@pytest.fixture(scope="session")
def base_run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_run(tmp_path_factory.mktemp("base") / "run", pretrain_steps=100)


@pytest.fixture(scope="session")
def seed_tasks() -> Path:
    assert SEED_TASKS.is_file(), f"shared data missing: {SEED_TASKS}"
    return SEED_TASKS


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory, seed_tasks) -> Path:
    """Alpaca records made from the first instance of the real self-instruct seed tasks,
    short enough for the tiny models' context."""
    recs = []
    for line in seed_tasks.read_text().splitlines():
        task = json.loads(line)
        inst = task["instances"][0]
        if len(task["instruction"]) + len(inst["input"]) + len(inst["output"]) < 150:
            recs.append({"instruction": task["instruction"], "input": inst["input"], "output": inst["output"]})
    assert len(recs) >= 20
    return write_jsonl(tmp_path_factory.mktemp("data") / "alpaca.jsonl", recs)
