"""Fixtures of the fine-tuning tests: a tiny base run and real instruction data."""
import json
from pathlib import Path

import pytest
import torch

from ft_helpers import make_run, write_jsonl
from sample_data import write_seed_tasks


@pytest.fixture(scope="session")
def base_run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_run(tmp_path_factory.mktemp("base") / "run", pretrain_steps=100)


@pytest.fixture(scope="session")
def seed_tasks(tmp_path_factory) -> Path:
    """The 175 self-instruct seed tasks as a plain JSONL file (seed_tasks.jsonl)."""
    return write_seed_tasks(tmp_path_factory.mktemp("self-instruct") / "seed_tasks.jsonl")


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
