"""The optional stages of `mlscale run`: an IsoFLOP sweep with its fit, and fine-tuning."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from experiment_helpers import write_tiny_experiment

from mlscale.errors import ConfigError
from mlscale.experiment.config import load_experiment
from mlscale.experiment.runner import run_experiment

OPTIONAL = """
[scaling]
enabled = true
budgets = [2e10, 4e10]
sizes = 3
bootstrap = 0

[finetune]
enabled = true
data_file = "instructions.jsonl"
method = "lora"

[finetune.train]
max_steps = 6
warmup_steps = 1
eval_every = 3
batch_size = 4
"""


def _experiment(folder: Path) -> Path:
    # instruction examples with their template need a longer context than the tiny default
    toml = write_tiny_experiment(folder, **{"seq_len = 32": "seq_len = 128"})
    toml.write_text(toml.read_text() + OPTIONAL)
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i} {i}"}
            for i in range(40)]
    (folder / "instructions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return toml


def test_scaling_and_finetune_join_the_chain(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    toml = _experiment(tmp_path / "exp")
    cfg, base, source = load_experiment(toml)
    out = tmp_path / "out"
    result = run_experiment(cfg, out, base=base, source=source)
    assert result["ran"] == ["curate", "tokenize", "pretrain", "evaluate", "generate", "scaling", "finetune"]
    runs = (out / "scaling" / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 6  # header + 2 budgets x 3 sizes
    fit = json.loads((out / "scaling" / "fit" / "fit.json").read_text())
    assert fit["law"] == "chinchilla" and fit["n_points"] == 6 and fit["alpha"] > 0
    ft = json.loads((out / "finetune" / "manifest.json").read_text())
    assert ft["stage"] == "finetune"
    assert (out / "finetune" / "adapter" / "adapter_config.json").is_file()
    html = (out / "report.html").read_text()
    assert "Scaling law" in html and "Fine-tuning" in html

    # a finetune change reruns finetune alone; the sweep before it stays up to date
    capsys.readouterr()
    cfg2, _, _ = load_experiment(toml, ["--finetune.lora.r=4"])
    again = run_experiment(cfg2, out, base=base, source=source)
    assert again["ran"] == ["finetune"]


def test_finetune_stage_needs_its_data(tmp_path: Path) -> None:
    toml = _experiment(tmp_path / "exp")
    (tmp_path / "exp" / "instructions.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"\[finetune\] data_file: 'instructions.jsonl' not found"):
        load_experiment(toml)
    with pytest.raises(ConfigError, match="finetune.data_file"):
        load_experiment(toml, ["--finetune.data_file="])
