"""Checkpoints: atomic, complete, safe to load, and refused when they do not fit."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from mlscale.config import from_dict, to_dict
from mlscale.errors import ArtifactError
from mlscale.model.llama import Llama, LlamaConfig
from mlscale.model.registry import get_family
from mlscale.train import checkpoint as ck
from mlscale.train.config import PretrainConfig, TrainConfig
from mlscale.train.optimizer import build_optimizer


def tiny(tie: bool = True, d_model: int = 32) -> Llama:
    torch.manual_seed(0)
    return get_family("llama").build(LlamaConfig(n_layer=2, n_head=2, d_model=d_model, seq_len=8, vocab_size=30, tie_embeddings=tie))


def trained_optimizer(model: Llama) -> torch.optim.Optimizer:
    opt = build_optimizer(model, from_dict(TrainConfig, {"warmup_steps": 0, "max_steps": 5}))
    x = torch.randint(0, 30, (2, 8))
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    return opt


@pytest.mark.parametrize("tie", [True, False])
def test_roundtrip_weights_optimizer_and_tied_embeddings(tmp_path, tie):
    model = tiny(tie)
    opt = trained_optimizer(model)
    cfg = {"model": to_dict(model.cfg)}
    path = ck.save_checkpoint(tmp_path, 7, model, opt, {"tokens_seen": 1}, cfg, keep=2)
    assert path.name == "step-00000007" and ck.checkpoint_step(path) == 7
    other = tiny(tie)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    opt2 = build_optimizer(other, from_dict(TrainConfig, {"warmup_steps": 0, "max_steps": 5}))
    state = ck.load_checkpoint(path, other, opt2)
    assert state["step"] == 7 and state["tokens_seen"] == 1
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n
    assert (other.lm_head.weight is other.embed.weight) == tie  # the tie survives loading
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        assert all(torch.equal(s1["state"][k][f], s2["state"][k][f]) for f in s1["state"][k])


def test_optimizer_state_loads_without_unpickling_objects(tmp_path):
    model = tiny()
    path = ck.save_checkpoint(tmp_path, 1, model, trained_optimizer(model), {}, {}, keep=1)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state": {}, "param_groups": [], "x": Evil()}, path / ck.OPTIMIZER_FILE)
    with pytest.raises(pickle.UnpicklingError):
        ck.load_checkpoint(path, tiny(), trained_optimizer(tiny()))


def test_shape_and_tokenizer_mismatches_are_named(tmp_path):
    small = tiny(d_model=32)
    cfg = {"model": to_dict(small.cfg)}
    path = ck.save_checkpoint(tmp_path, 1, small, trained_optimizer(small),
                              {"tokenizer_fingerprint": "a" * 32}, cfg, keep=1)
    big = tiny(d_model=64)
    with pytest.raises(ArtifactError, match=r"another shape \(blocks.0.attn.k_proj.weight: checkpoint \(32, 32\) vs model \(64, 64\)"):
        ck.load_weights(big, path / ck.MODEL_FILE)
    with pytest.raises(ArtifactError, match=r"model.d_model: 32 -> 64"):
        ck.check_compatible(path, {"model": to_dict(big.cfg)}, "a" * 32)
    with pytest.raises(ArtifactError, match="another tokenizer"):
        ck.check_compatible(path, cfg, "b" * 32)
    ck.check_compatible(path, cfg, "a" * 32)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = tiny()
    opt = trained_optimizer(model)
    ck.save_checkpoint(tmp_path, 1, model, opt, {}, {}, keep=3)

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path, 2, model, opt, {}, {}, keep=3)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000001"]
    assert not [p for p in (tmp_path / ck.CHECKPOINTS).iterdir() if p.name.startswith(".")]


def test_keep_prunes_oldest(tmp_path):
    model = tiny()
    opt = trained_optimizer(model)
    for step in (1, 2, 3, 4):
        ck.save_checkpoint(tmp_path, step, model, opt, {}, {}, keep=2)
    assert [ck.checkpoint_step(p) for p in ck.list_checkpoints(tmp_path)] == [3, 4]
    assert ck.latest_checkpoint(tmp_path).name == "step-00000004"


def test_rng_state_roundtrip_through_json():
    import random

    import numpy as np

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = json.loads(json.dumps(ck.rng_state()))
    a = (torch.rand(3), np.random.rand(3), random.random())
    ck.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


def test_load_run_requires_a_run_directory(tmp_path):
    from mlscale.errors import InputError

    with pytest.raises(InputError, match="not a mlscale run"):
        ck.load_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(to_dict(PretrainConfig())))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(InputError, match="no checkpoint"):
        ck.load_run(tmp_path)
