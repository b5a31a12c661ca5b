"""Sampling: top-k / nucleus filters against transformers', KV-cached decoding, seeds, eos."""
from __future__ import annotations

import pytest
import torch

from mlscale.errors import ConfigError
from mlscale.evaluate.sampling import filter_logits, generate, sample_next
from mlscale.model.llama import Llama, LlamaConfig
from mlscale.model.registry import get_family


@pytest.fixture(scope="module")
def model() -> Llama:
    # a larger init than training's gives peaked next-token distributions, so greedy
    # choices are not decided by rounding between near-equal logits
    cfg = LlamaConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=64, seq_len=32, vocab_size=50,
                      init_std=0.3)
    cfg.validate()
    torch.manual_seed(0)
    return get_family("llama").build(cfg).eval()


def full_recompute_greedy(model: Llama, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The reference decoder: no cache, the whole (cropped) context every step."""
    out = idx
    for _ in range(n):
        logits = model(out[:, -model.cfg.seq_len:])[0][:, -1]
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
    return out


@pytest.mark.parametrize("prompt_len,new", [(5, 20), (10, 40), (32, 6)])
def test_greedy_with_kv_cache_equals_full_recomputation(model, prompt_len, new):
    """Within the context, and past it (the window slides: 10 + 40 > 32)."""
    torch.manual_seed(1)
    idx = torch.randint(0, 50, (3, prompt_len))
    cached = generate(model, idx, new, temperature=0)
    assert cached.shape == (3, prompt_len + new)
    assert torch.equal(cached[:, :prompt_len], idx)
    assert torch.equal(cached, full_recompute_greedy(model, idx, new))


def test_top_k_and_top_p_match_transformers_logits_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(64, 200) * 3
    for k in (1, 5, 50):
        ours = filter_logits(logits, top_k=k)
        theirs = TopKLogitsWarper(k)(None, logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        assert ((ours > float("-inf")).sum(-1) == k).all()
    for p in (0.1, 0.5, 0.9, 0.99):
        ours = filter_logits(logits, top_p=p)
        theirs = TopPLogitsWarper(p)(None, logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), p
        kept = ours > float("-inf")
        assert torch.equal(ours[kept], logits[kept])


def test_nucleus_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    assert (filter_logits(logits, top_p=0.8) > float("-inf")).tolist() == [[False, True, False, True]]
    assert (filter_logits(logits, top_p=0.81) > float("-inf")).tolist() == [[False, True, True, True]]
    # the most likely token survives however small p is
    assert (filter_logits(logits, top_p=1e-6) > float("-inf")).sum() == 1
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)


def test_sampling_follows_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    n = 20_000
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(n, 5), temperature=1.0, generator=gen)
    freq = torch.bincount(draws, minlength=5).float() / n
    torch.testing.assert_close(freq, torch.softmax(logits, -1), atol=0.015, rtol=0)
    # temperature 0.5 sharpens: softmax(logits / 0.5); top_k=2 renormalises over two tokens
    draws = sample_next(logits.expand(n, 5), temperature=0.5, top_k=2, generator=gen)
    freq = torch.bincount(draws, minlength=5).float() / n
    expected = torch.zeros(5)
    expected[:2] = torch.softmax(logits[:2] / 0.5, -1)
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)


def test_seeded_sampling_is_reproducible(model):
    idx = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(5))

    def run(seed):
        return generate(model, idx, 25, temperature=1.0, top_k=20, top_p=0.9,
                        generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_eos_stops_rows_and_then_decoding(model):
    idx = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(7))
    greedy = generate(model, idx, 12, temperature=0)
    eos = int(greedy[0, 6])  # the 3rd token row 0 produces greedily
    out = generate(model, idx, 12, temperature=0, eos_id=eos)
    row0 = out[0, 4:].tolist()
    first = row0.index(eos)
    assert all(t == eos for t in row0[first:])
    if eos not in greedy[1, 4:].tolist():
        assert out.shape[1] == greedy.shape[1] and torch.equal(out[1], greedy[1])
    # a prompt whose every row hits eos at once stops after one token
    always = int(greedy[0, 4])
    stopped = generate(model, idx[:1], 12, temperature=0, eos_id=always)
    assert stopped.shape == (1, 5)


def test_generation_restores_training_mode(model):
    model.train()
    generate(model, torch.zeros(1, 2, dtype=torch.long), 3, temperature=0)
    assert model.training
    model.eval()


@pytest.mark.parametrize("kw", [{"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_bad_sampling_settings_are_refused(model, kw):
    with pytest.raises(ConfigError):
        generate(model, torch.zeros(1, 2, dtype=torch.long), 3, **kw)
