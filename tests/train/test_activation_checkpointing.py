"""Activation checkpointing recomputes activations without changing the gradients."""
from __future__ import annotations

import pytest
import torch

from mlscale.model.llama import LlamaConfig
from mlscale.model.registry import get_family
from mlscale.train.parallel import apply_activation_checkpointing


def _grads(mode: str) -> tuple[float, dict[str, torch.Tensor], list[str]]:
    torch.manual_seed(0)
    cfg = LlamaConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, seq_len=16, vocab_size=50)
    cfg.validate()
    model = get_family("llama").build(cfg)
    apply_activation_checkpointing(list(model.blocks), mode)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 50, (3, 16), generator=g)
    y = torch.randint(0, 50, (3, 16), generator=g)
    _, loss = model(x, y)
    loss.backward()
    names = list(model.state_dict())
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, names


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_gives_the_same_gradients(mode):
    loss0, grads0, names0 = _grads("none")
    loss1, grads1, names1 = _grads(mode)
    assert names1 == names0  # parameter names (checkpoints, export) unchanged
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointing_recomputes_in_backward():
    """The blocks' forward runs again during backward (that is what saves the memory)."""
    cfg = LlamaConfig(n_layer=2, n_head=2, d_model=16, seq_len=8, vocab_size=20)
    model = get_family("llama").build(cfg)
    calls = []
    for block in model.blocks:
        block.attn.register_forward_pre_hook(lambda *a: calls.append(1))
    apply_activation_checkpointing(list(model.blocks), "full")
    _, loss = model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))
    assert len(calls) == 2
    loss.backward()
    assert len(calls) == 4
