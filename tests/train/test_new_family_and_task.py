"""A new model family and a new task, defined here, train through `mlscale train` unchanged:
an MLP classifier on synthetic clusters, checkpointed and resumed bit for bit."""
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mlscale.train.trainer as trainer
from mlscale.cli import main
from mlscale.config import option
from mlscale.model.registry import ModelFamily, register_family
from mlscale.train.config import ParallelConfig, TrainConfig, model_config_class
from mlscale.train.metrics import read_metrics
from mlscale.train.task import Task, register_task


@dataclass
class MLPConfig:
    family: str = option("toy-mlp", "model family")
    d_in: int = option(8, "input features")
    hidden: int = option(32, "hidden width")
    classes: int = option(3, "classes")


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(cfg.d_in, cfg.hidden), nn.GELU()),
                                     nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.GELU())])
        self.head = nn.Linear(cfg.hidden, cfg.classes)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


register_family(ModelFamily(name="toy-mlp", config_cls=MLPConfig, build=MLP, blocks=lambda m: list(m.blocks),
                            flops_per_sample=lambda cfg, m: 6.0 * sum(p.numel() for p in m.parameters())))


@dataclass
class ClassifyConfig:
    model: Any = option(default_factory=MLPConfig, select=("family", model_config_class))
    train: TrainConfig = option(default_factory=TrainConfig)
    parallel: ParallelConfig = option(default_factory=ParallelConfig)


@register_task
class Classify(Task):
    name, config_cls, unit = "toy-classify", ClassifyConfig, "sample"

    def __init__(self, cfg, data, runtime, base=None):
        super().__init__(cfg, data, runtime, base)
        arrays = np.load(data)
        self.x, self.y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])

    def batch(self, index):  # a function of (seed, index) alone: resumable
        g = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + index)
        rows = torch.randint(0, 400, (self.cfg.train.batch_size,), generator=g)
        return self.x[rows], self.y[rows]

    def loss(self, model, batch):
        logits = model(batch[0])
        return F.cross_entropy(logits, batch[1]), {"accuracy": float((logits.argmax(-1) == batch[1]).float().mean())}

    def units(self, batch):
        return len(batch[0])

    @torch.no_grad()
    def evaluate(self, model):  # the last 100 points are held out
        return {"val_accuracy": float((model(self.x[400:]).argmax(-1) == self.y[400:]).float().mean())}


@pytest.fixture
def clusters(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, (3, 8))
    y = rng.integers(0, 3, 500)
    np.savez(tmp_path / "clusters.npz", x=(centers[y] + rng.normal(0, 1, (500, 8))).astype(np.float32), y=y)
    return tmp_path / "clusters.npz"


def test_a_family_and_task_from_outside_train_checkpoint_and_resume_exactly(clusters, tmp_path, monkeypatch):
    args = ["train", "--task", "toy-classify", "--data", str(clusters), "--train.max_steps=40",
            "--train.batch_size=32", "--train.warmup_steps=5", "--train.lr=1e-2", "--train.eval_every=20",
            "--train.checkpoint_every=10", "--train.device=cpu", "--train.log_every=10"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    assert whole[-1]["val_accuracy"] > 0.9 and whole[-1]["step"] == 40
    real, calls = trainer.apply_update, {"n": 0}

    def interrupt_in_step_25(*a, **k):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(trainer, "apply_update", interrupt_in_step_25)
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(trainer, "apply_update", real)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())[-1] == "step-00000020"
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    def untimed(records):  # every logged value but the clock's, compared exactly
        return [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s", "mfu")} for r in records]

    assert untimed(read_metrics(tmp_path / "cut" / "metrics.jsonl")) == untimed(whole)
