"""The LLaMA-style decoder: shapes, accounting, masking, packing, loss, KV cache."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mlscale.model.config import ModelConfig
from mlscale.model.cpu_fused import rms_norm
from mlscale.model.llama import Llama, positions_in_segments


def make(seed: int = 0, **kw) -> Llama:
    base = dict(n_layer=2, n_head=4, n_kv_head=2, d_model=64, seq_len=32, vocab_size=101)
    cfg = ModelConfig(**{**base, **kw})
    cfg.validate()
    torch.manual_seed(seed)
    return Llama(cfg).eval()


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("kv", [4, 2, 1])
def test_num_params_counts_every_weight_once(tie, kv):
    m = make(n_kv_head=kv, tie_embeddings=tie)
    c = m.cfg
    d, V, L, hd, ffn = c.d_model, c.vocab_size, c.n_layer, c.head_dim, c.ffn_hidden
    per_block = (d * c.n_head * hd            # q
                 + 2 * d * kv * hd            # k, v
                 + c.n_head * hd * d          # o
                 + 3 * d * ffn                # gate, up, down
                 + 2 * d)                     # two norm gains
    embeddings = V * d * (1 if tie else 2)
    assert m.num_params() == embeddings + L * per_block + d
    assert m.num_params(non_embedding=True) == L * per_block + d
    assert (m.lm_head.weight is m.embed.weight) == tie


@pytest.mark.parametrize("tie", [True, False])
def test_flops_per_token_equals_counted_matmul_flops_of_a_training_step(tie):
    """6N + 12 L d T against torch's FLOP counter over forward + backward."""
    m = make(tie_embeddings=tie, n_kv_head=2).train()
    B, T = 2, 16
    idx = torch.randint(0, m.cfg.vocab_size, (B, T))
    # the math backend spells attention as matmuls, which the counter sees; the fused CPU
    # attention kernel registers the same count (cpu_kernels._register_flop_formulas)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = m(idx, idx)
        loss.backward()
    assert counter.get_total_flops() / (B * T) == m.flops_per_token(T)
    n_linear = m.num_params(non_embedding=True) - (2 * m.cfg.n_layer + 1) * m.cfg.d_model
    c = m.cfg
    assert m.flops_per_token() == 6 * (n_linear + c.vocab_size * c.d_model) + 12 * c.n_layer * c.d_model * c.seq_len


def test_init_scales_residual_output_projections():
    m = make(n_layer=4, d_model=256, n_head=4, n_kv_head=4, init_std=0.02)
    scaled = 0.02 / math.sqrt(2 * 4)
    for b in m.blocks:
        assert b.attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert b.attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert b.mlp.down_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert torch.equal(b.attn_norm.weight, torch.ones(256))
    assert all(p.ndim > 1 or torch.all(p == 1) for p in m.parameters())
    assert not any(n.endswith("bias") for n, _ in m.named_parameters())


def test_causal_masking_future_tokens_do_not_change_past_logits():
    m = make()
    a = torch.randint(0, 101, (2, 32))
    b = a.clone()
    b[:, 20:] = torch.randint(0, 101, (2, 12))
    la, lb = m(a)[0], m(b)[0]
    torch.testing.assert_close(la[:, :20], lb[:, :20], rtol=0, atol=1e-6)
    assert (la[:, 20:] - lb[:, 20:]).abs().max() > 1e-3


def test_positions_in_segments():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    assert positions_in_segments(seg).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


def test_segment_ids_isolate_packed_examples():
    """A packed pair gives each example's logits as if it were alone."""
    m = make()
    a, b = torch.randint(0, 101, (1, 11)), torch.randint(0, 101, (1, 21))
    packed = torch.cat([a, b], dim=1)
    seg = torch.tensor([[0] * 11 + [1] * 21])
    alone_a, alone_b = m(a)[0], m(b)[0]
    for pos in (None, torch.cat([torch.arange(11), torch.arange(21)])[None]):
        out = m(packed, segment_ids=seg, position_ids=pos)[0]
        torch.testing.assert_close(out[:, :11], alone_a, rtol=0, atol=1e-5)
        torch.testing.assert_close(out[:, 11:], alone_b, rtol=0, atol=1e-5)
    # without the segments, b sees a: different logits
    assert (m(packed)[0][:, 11:] - alone_b).abs().max() > 1e-3


def test_loss_is_mean_cross_entropy_over_targets_not_ignored():
    m = make()
    idx = torch.randint(0, 101, (3, 16))
    tgt = torch.randint(0, 101, (3, 16))
    tgt[0, :5] = -100
    tgt[2, 10:] = -100
    logits, loss = m(idx, tgt)
    keep = tgt != -100
    expected = F.cross_entropy(logits[keep], tgt[keep])
    torch.testing.assert_close(loss, expected)
    # changing an ignored target changes nothing
    tgt2 = tgt.clone()
    tgt2[0, :5] = -100
    tgt2[0, 0] = -100
    assert m(idx, tgt2)[1].item() == loss.item()
    assert logits.shape == (3, 16, 101)


def test_every_parameter_gets_a_gradient():
    m = make(tie_embeddings=False).train()
    idx = torch.randint(0, 101, (2, 16))
    m(idx, idx)[1].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_rmsnorm_backward_matches_numerical_gradient():
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, w))


def test_rmsnorm_matches_its_definition():
    m = make()
    x = torch.randn(2, 5, 64)
    norm = m.blocks[0].attn_norm
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    ref = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    torch.testing.assert_close(norm(x), ref)
    torch.testing.assert_close(norm(x.bfloat16()).float(), ref, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("kv", [4, 1])
def test_kv_cache_gives_the_logits_of_a_full_forward(kv):
    m = make(n_kv_head=kv)
    idx = torch.randint(0, 101, (2, 30))
    full = m(idx)[0]
    cache = m.new_kv_cache(2)
    parts = [m(idx[:, :12], kv_cache=cache)[0]]          # prefill
    parts.append(m(idx[:, 12:17], kv_cache=cache)[0])    # a chunk after the prefix
    for t in range(17, 30):                              # one token at a time
        parts.append(m(idx[:, t:t + 1], kv_cache=cache)[0])
    assert cache.pos == 30
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


def test_sequences_longer_than_the_context_are_refused():
    m = make()
    with pytest.raises(ValueError, match="seq_len"):
        m(torch.zeros(1, 33, dtype=torch.long))
    cache = m.new_kv_cache(1)
    m(torch.zeros(1, 32, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="seq_len"):
        m(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError):
        m.new_kv_cache(1, max_len=64)
    with pytest.raises(ValueError, match="vocab_size"):
        Llama(ModelConfig())


def test_rotary_tables_survive_a_round_trip_through_bf16():
    m = make()
    cos = m.rotary.cos.clone()
    m.to(torch.bfloat16).to(torch.float32)
    assert m.rotary.cos.dtype == torch.float32 and torch.equal(m.rotary.cos, cos)
    assert "rotary.cos" not in m.state_dict()


def test_bf16_forward_runs_and_stays_close():
    m = make()
    idx = torch.randint(0, 101, (1, 16))
    ref = m(idx)[0]
    low = m.to(torch.bfloat16)(idx)[0]
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05


def test_fused_projections_compute_what_the_separate_layers_compute():
    """q/k/v and gate/up run as one matmul each; hooked or replaced layers (tensor
    parallelism, LoRA) take the per-module path, with the same result and gradients."""
    fused = make(tie_embeddings=False).train()
    separate = make(tie_embeddings=False).train()
    calls = []
    for b in separate.blocks:
        for lin in (b.attn.q_proj, b.mlp.up_proj):
            lin.register_forward_hook(lambda mod, args, out: calls.append(1))
    idx = torch.randint(0, 101, (2, 24))
    la, loss_a = fused(idx, idx)
    lb, loss_b = separate(idx, idx)
    assert len(calls) == 2 * separate.cfg.n_layer  # the hooks ran: the module path was taken
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
    loss_a.backward()
    loss_b.backward()
    for (name, pa), pb in zip(fused.named_parameters(), separate.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
