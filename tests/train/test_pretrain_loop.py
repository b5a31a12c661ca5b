"""The pretraining loop end to end on tiny configs: resume, refusals, divergence, outputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mlscale.train.loop as loop
import mlscale.train.trainer as trainer
from mlscale.tasks.lm import LanguageModeling
from mlscale.cli import main
from mlscale.config import from_dict, load_config
from mlscale.errors import ArtifactError, InputError
from mlscale.train.checkpoint import list_checkpoints, load_run
from mlscale.train.config import PretrainConfig
from mlscale.train.metrics import read_metrics
from sample_data import shakespeare_text


def make_tokens(root: Path, name: str, text: str) -> Path:
    from mlscale.tokenize import TokenizeConfig, tokenize_corpus

    src = root / f"{name}.txt"
    src.write_text(text)
    cfg = load_config(TokenizeConfig, overrides=["--tokenizer.kind=char", "--shards.workers=1"])
    tokenize_corpus([src], root / name, cfg, progress=False)
    return root / name


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    text = shakespeare_text()[:40_000]
    return make_tokens(tmp_path_factory.mktemp("tok"), "shakespeare", text)


def tiny(model: dict | None = None, **train) -> PretrainConfig:
    return from_dict(PretrainConfig, {
        "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "seq_len": 16, **(model or {})},
        "train": {"batch_size": 4, "max_steps": 20, "warmup_steps": 3, "lr": 3e-3, "min_lr": 3e-4,
                  "eval_every": 5, "eval_batches": 2, "checkpoint_every": 5, "keep_checkpoints": 5,
                  "device": "cpu", "log_every": 5, **train},
    })


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(run / "metrics.jsonl") if "train_loss" in r}


def test_resume_after_interruption_is_bit_exact(tokens, tmp_path, monkeypatch):
    cfg = tiny(grad_accum=2, max_steps=16, checkpoint_every=8)
    whole = tmp_path / "whole"
    loop.pretrain(cfg, tokens, whole)

    # the same run, interrupted (Ctrl-C) in step 11, after the checkpoint of step 8
    real = trainer.apply_update
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "apply_update", interrupting)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        loop.pretrain(cfg, tokens, broken)
    monkeypatch.setattr(trainer, "apply_update", real)
    assert [p.name for p in list_checkpoints(broken)] == ["step-00000008"]
    assert max(losses(broken)) == 10
    with pytest.raises(ArtifactError, match="--resume"):
        loop.pretrain(cfg, tokens, broken)  # never silently overwritten
    loop.pretrain(cfg, tokens, broken, resume=True)

    a, b = losses(whole), losses(broken)
    assert sorted(b) == list(range(1, 17))  # the redone steps replaced, not duplicated
    assert a == b  # exact float equality, every step
    wa = load_file(str(whole / "checkpoints" / "step-00000016" / "model.safetensors"))
    wb = load_file(str(broken / "checkpoints" / "step-00000016" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    val_a = [r for r in read_metrics(whole / "metrics.jsonl") if "val_loss" in r]
    val_b = [r for r in read_metrics(broken / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in val_b] == [5, 10, 15, 16] and val_a == val_b


def test_outputs_and_metrics(tokens, tmp_path, capsys):
    run = tmp_path / "run"
    summary = loop.pretrain(tiny(), tokens, run)
    out = capsys.readouterr().out
    assert "step 20/20 | loss" in out and "MFU n/a" in out and "ETA" in out and "tok/s" in out
    recs = read_metrics(run / "metrics.jsonl")
    steps = [r for r in recs if "train_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert {"step", "train_loss", "lr", "tokens_per_s"} <= set(steps[0])
    assert [r["step"] for r in recs if "val_loss" in r] == [5, 10, 15, 20]
    assert steps[-1]["train_loss"] < steps[0]["train_loss"]
    assert summary["final_val_loss"] == recs[-1]["val_loss"]
    vocab = json.loads((tokens / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == vocab
    assert (run / "tokenizer.json").read_bytes() == (tokens / "tokenizer.json").read_bytes()
    assert len(list_checkpoints(run)) == 4  # 5, 10, 15, 20
    state = json.loads((run / "checkpoints" / "step-00000020" / "state.json").read_text())
    assert state["step"] == 20 and state["tokens_seen"] == 20 * 4 * 16
    assert {"rng", "data", "schedule", "tokenizer_fingerprint"} <= set(state)
    assert not any(p.name.startswith(".tmp") for p in (run / "checkpoints").iterdir())
    # a finished run with the same config is not retrained
    assert loop.pretrain(tiny(), tokens, run, resume=True) == summary
    loaded = load_run(run)
    assert loaded.step == 20 and not loaded.model.training
    x = torch.arange(16).view(1, 16) % vocab
    assert loaded.model(x)[0].shape == (1, 16, vocab)


def test_keep_last_checkpoints_and_extend_on_resume(tokens, tmp_path):
    run = tmp_path / "run"
    loop.pretrain(tiny(max_steps=10, keep_checkpoints=2, schedule="wsd"), tokens, run)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000005", "step-00000010"]
    # train.max_steps may change on resume (extending a WSD run)
    summary = loop.pretrain(tiny(max_steps=15, keep_checkpoints=2, schedule="wsd"), tokens, run, resume=True)
    assert summary["steps"] == 15
    assert [p.name for p in list_checkpoints(run)] == ["step-00000010", "step-00000015"]


def test_non_finite_loss_stops_before_the_update(tokens, tmp_path, monkeypatch):
    real = LanguageModeling.loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss, metrics = real(*args)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    monkeypatch.setattr(LanguageModeling, "loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(trainer.TrainingDiverged, match="step 3: non-finite loss .* stopped before the update"):
        loop.pretrain(tiny(eval_every=0), tokens, run)
    saved = run / "nonfinite-step-00000003"
    assert (saved / "model.safetensors").exists() and (saved / "gradients.safetensors").exists()
    state = json.loads((saved / "state.json").read_text())
    assert state["step"] == 3 and state["data"]["next_batch"] == 2
    weights = load_file(str(saved / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())  # the update was not applied
    assert max(losses(run)) == 2
    assert not list_checkpoints(run)  # nothing broken where --resume would look


def test_bad_inputs_are_clear_errors(tokens, tmp_path):
    with pytest.raises(InputError, match="token directory not found"):
        loop.pretrain(tiny(), tmp_path / "nope", tmp_path / "run")
    no_tok = tmp_path / "no_tok"
    shutil.copytree(tokens, no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="tokenizer"):
        loop.pretrain(tiny(), no_tok, tmp_path / "run")


def test_mismatched_runs_are_refused(tokens, tmp_path):
    run = tmp_path / "run"
    loop.pretrain(tiny(max_steps=5), tokens, run)
    # another model shape on --resume: the differing key is named
    with pytest.raises(ArtifactError, match=r"model.d_model: 32 -> 64"):
        loop.pretrain(tiny({"d_model": 64}, max_steps=5), tokens, run, resume=True)
    # another tokenizer on --resume
    other = make_tokens(tmp_path, "other", "abcdefg hijklmnop " * 200)
    with pytest.raises(ArtifactError, match="tokenizer"):
        loop.pretrain(tiny(max_steps=10), other, run, resume=True)
    # a checkpoint of another shape under a run's config: load_run names the key
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["n_layer"] = 3
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match=r"another model shape \(model.n_layer: 2 -> 3\)"):
        load_run(run)
    # --force starts over
    assert loop.pretrain(tiny(max_steps=5, seed=7), tokens, run, force=True)["steps"] == 5


def test_cli_pretrain_with_preset_and_errors(tokens, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["pretrain", "--data", str(tokens), "--out", str(run), "--preset", "nanogpt-shakespeare-char",
               "--model.n_layer=1", "--model.d_model=32", "--train.max_steps=3", "--train.warmup_steps=1",
               "--train.eval_batches=1", "--train.device=cpu"])
    assert rc == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["beta2"] == 0.99 and cfg["model"]["seq_len"] == 64  # from the preset
    capsys.readouterr()
    assert main(["pretrain", "--data", str(tokens), "--out", str(tmp_path / "r2"),
                 "--train.warmup_step=3"]) == 2
    assert "did you mean 'train.warmup_steps'" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tokens), "--out", str(tmp_path / "r2"),
                 "--preset", "nanogpt"]) == 2
    assert "unknown preset 'nanogpt'" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r3")]) == 2
    assert "token directory not found" in capsys.readouterr().err
