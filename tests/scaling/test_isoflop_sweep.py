"""IsoFLOP sweeps: depth choice, step counts from the model's FLOPs, a tiny real sweep, resume."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mlscale.cli import main
from mlscale.errors import ArtifactError
from mlscale.scaling.sweep import choose_depths, plan_runs, sweep
from mlscale.scaling.table import read_table
from mlscale.tokenize.tokenizer import load_tokenizer
from mlscale.train.config import PretrainConfig
from sample_data import shakespeare_text

BUDGETS = [2e8, 4e8]


def tiny_base() -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.model.seq_len = 16
    t = cfg.train
    t.batch_size, t.warmup_steps, t.eval_batches, t.device, t.log_every = 2, 2, 2, "cpu", 1000
    t.checkpoint_every = 10
    return cfg


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep-data")
    text = root / "shakespeare.txt"
    text.write_text(shakespeare_text()[:40_000], "utf-8")
    assert main(["tokenize", str(text), "--out", str(root / "tok"), "--tokenizer", "char", "--quiet"]) == 0
    return root / "tok"


def test_choose_depths_centres_the_window_on_the_prior_optimum():
    sizes = {d: 49_152 * d ** 3 for d in range(1, 33)}
    budget = 1e18
    window = choose_depths(sizes, budget, 4, 20.0)
    assert window == list(range(window[0], window[0] + 4))
    target = math.sqrt(budget / 120.0)
    assert sizes[window[0]] < target < sizes[window[-1]]  # the profile brackets the prior optimum
    assert choose_depths(sizes, 1e6, 3, 20.0) == [1, 2, 3]  # cannot go below depth 1


def test_planned_runs_spend_their_budget_with_the_models_own_flops():
    base = tiny_base()
    runs = plan_runs(base, 69, [1e10, 3e10], 3, 20.0)
    assert len(runs) == 6
    for run in runs:
        assert run.cfg.model.n_layer == run.depth and run.cfg.model.d_model == 64 * run.depth
        assert run.steps == round(run.budget / (run.flops_per_token * run.tokens_per_step))
        assert abs(run.compute - run.budget) <= 0.5 * run.flops_per_token * run.tokens_per_step
        assert run.flops_per_token > 6 * (run.params - 69 * run.cfg.model.d_model)  # 6N + attention
        t = run.cfg.train
        assert (t.max_steps, t.schedule, t.eval_every) == (run.steps, "cosine", 0)
        assert t.warmup_steps < t.max_steps
    assert base.model.depth == 0 and base.train.max_steps == 2000  # the base is not modified


def test_tiny_sweep_runs_resumes_and_feeds_the_fit(tmp_path, tok_dir, monkeypatch, capsys):
    import mlscale.train.loop as loop
    import mlscale.train.trainer as trainer

    real_pretrain, real_save = loop.pretrain, trainer.save_checkpoint
    calls: list[str] = []

    def counting(cfg, data_dir, out_dir, resume=False, **kw):
        calls.append(Path(out_dir).name)
        return real_pretrain(cfg, data_dir, out_dir, resume=resume, **kw)

    def crash_in_third_run(run_dir, step, *a, **kw):
        real_save(run_dir, step, *a, **kw)
        if len(calls) == 3 and step == 10:  # the third run dies after its step-10 checkpoint
            raise KeyboardInterrupt

    out = tmp_path / "sweep"
    monkeypatch.setattr(loop, "pretrain", counting)
    monkeypatch.setattr(trainer, "save_checkpoint", crash_in_third_run)
    with pytest.raises(KeyboardInterrupt):
        sweep(tiny_base(), tok_dir, out, BUDGETS, sizes=2)
    finished = (out / "runs.csv").read_text().splitlines()
    assert len(finished) == 1 + 2 and finished[0].startswith("N,D,C,loss")  # finished runs are in the table
    interrupted_run = out / "runs" / calls[2]
    assert [p.name for p in (interrupted_run / "checkpoints").iterdir()] == ["step-00000010"]

    calls.clear()
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    manifest = sweep(tiny_base(), tok_dir, out, BUDGETS, sizes=2)
    assert calls == [interrupted_run.name, "C4e+08-d2"]  # finished runs skipped
    assert f"resuming {interrupted_run}" in capsys.readouterr().out
    rows = manifest["runs"]
    assert len(rows) == 4 and {r["budget"] for r in rows} == set(BUDGETS)

    # the resumed run ends exactly where an uninterrupted one does (CPU is deterministic)
    resumed = next(r for r in rows if Path(r["run"]).name == interrupted_run.name)
    vocab = load_tokenizer(tok_dir / "tokenizer.json").vocab_size
    run = next(r for r in plan_runs(tiny_base(), vocab, BUDGETS, 2, 20.0) if r.name == interrupted_run.name)
    fresh = real_pretrain(run.cfg, tok_dir, tmp_path / "fresh")
    assert resumed["loss"] == pytest.approx(fresh["final_val_loss"], rel=1e-6)

    # rerunning a finished sweep trains nothing; another setup is refused
    calls.clear()
    sweep(tiny_base(), tok_dir, out, BUDGETS, sizes=2)
    assert calls == []
    with pytest.raises(ArtifactError, match="different setup"):
        sweep(tiny_base(), tok_dir, out, [1e9], sizes=2)

    table = read_table(out / "runs.csv")
    assert table.source["n_column"] == "N" and table.source["d_column"] == "D"
    for row, n, d in zip(rows, table.N, table.D):
        assert (n, d) == (row["N"], row["D"]) and row["D"] == row["steps"] * row["tokens_per_step"]
    capsys.readouterr()
    assert main(["scaling", "fit", str(out / "runs.csv"), "--starts", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["n_points"] == 4
    assert main(["scaling", "fit", str(out / "runs.csv"), "--law", "isoflop"]) == 2  # 2 sizes: no parabola
    assert "at least 2 profiles" in capsys.readouterr().err
