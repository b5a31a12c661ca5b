"""The hand-written CPU backward passes against autograd of the composite model code,
and the Llama with them swapped in (`fused.py`) against the pure model."""
import copy

import pytest
import torch
import torch.nn.functional as F

from mlscale.model.kernels import cpu_fused
from mlscale.model.layers import RMSNorm, RotaryEmbedding, SwiGLU, apply_rotary
from mlscale.model.llama import LlamaConfig
from mlscale.model.llama.fused import FusedAttention, FusedRMSNorm, FusedSwiGLU, apply_cpu_kernels
from mlscale.model.llama.model import Attention
from mlscale.model.registry import get_family


def build(**kw):
    return get_family("llama").build(LlamaConfig(**kw))


def fused_copy(model):
    """A deep copy of `model` with the fused CPU modules swapped in."""
    out = copy.deepcopy(model)
    assert apply_cpu_kernels(out) == 4 * model.cfg.n_layer + 1
    return out


def rotary_tables(T: int, D: int, positions: torch.Tensor | None = None):
    rope = RotaryEmbedding(D, 64, 10000.0).double()
    return rope(0, T, positions)


def composite_qkv(x, wq, wk, wv, cos, sin, H, KV):
    """The reference: separate projections, rotate-half rotary, [B, heads, T, D]."""
    B, T, _ = x.shape
    D = wq.shape[0] // H
    q = apply_rotary(F.linear(x, wq).view(B, T, H, D), cos, sin).transpose(1, 2)
    k = apply_rotary(F.linear(x, wk).view(B, T, KV, D), cos, sin).transpose(1, 2)
    v = F.linear(x, wv).view(B, T, KV, D).transpose(1, 2)
    return q, k, v


@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("packed", [False, True])
def test_qkv_rope_matches_composite_attention_and_gradients(H, KV, packed):
    g = torch.Generator().manual_seed(H * 10 + KV)
    B, T, C, D = 2, 7, 24, 8
    x = torch.randn(B, T, C, dtype=torch.float64, generator=g, requires_grad=True)
    ws = [torch.randn(n * D, C, dtype=torch.float64, generator=g, requires_grad=True) for n in (H, KV, KV)]
    # packed examples rotate with per-row positions: [B, T, D] tables
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]]) if packed else None
    cos, sin = rotary_tables(T, D, positions)

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)

    ref = composite_qkv(x, *ws, cos, sin, H, KV)
    fused = cpu_fused.qkv_rope(x, *ws, cos, sin, H, KV)
    for a, b in zip(fused, ref):
        assert a.is_contiguous() and torch.allclose(a, b, atol=1e-12)
    y_ref, y = attend(*ref), attend(*fused)
    assert torch.allclose(y, y_ref, atol=1e-12)
    gy = torch.randn(y.shape, dtype=y.dtype, generator=g)
    grads_ref = torch.autograd.grad(y_ref, [x, *ws], gy)
    grads = torch.autograd.grad(y, [x, *ws], gy)
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-11)


def test_qkv_rope_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    H, KV, D, C, T = 2, 1, 4, 6, 3
    x = torch.randn(1, T, C, dtype=torch.float64, generator=g, requires_grad=True)
    ws = [torch.randn(n * D, C, dtype=torch.float64, generator=g, requires_grad=True) for n in (H, KV, KV)]
    cos, sin = rotary_tables(T, D)
    assert torch.autograd.gradcheck(lambda *a: cpu_fused.qkv_rope(*a, cos, sin, H, KV), (x, *ws))


def test_frozen_weights_get_no_gradient_and_input_still_does():
    H, KV, D, C, T = 2, 2, 4, 8, 5
    x = torch.randn(1, T, C, requires_grad=True)
    ws = [torch.randn(n * D, C) for n in (H, KV, KV)]
    q, k, v = cpu_fused.qkv_rope(x, *ws, *rotary_tables(T, D), H, KV)
    (q.sum() + k.sum() + v.sum()).backward()
    assert x.grad is not None and all(w.grad is None for w in ws)


def test_swiglu_matches_composite_and_passes_gradcheck():
    g = torch.Generator().manual_seed(1)
    C, Fh = 6, 10
    x = torch.randn(2, 3, C, dtype=torch.float64, generator=g, requires_grad=True)
    wg, wu = (torch.randn(Fh, C, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    wd = torch.randn(C, Fh, dtype=torch.float64, generator=g, requires_grad=True)
    ref = F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)
    out = cpu_fused.swiglu(x, wg, wu, wd)
    assert torch.allclose(out, ref, atol=1e-12)
    gy = torch.randn(out.shape, dtype=out.dtype, generator=g)
    for a, b in zip(torch.autograd.grad(out, (x, wg, wu, wd), gy),
                    torch.autograd.grad(ref, (x, wg, wu, wd), gy)):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.autograd.gradcheck(cpu_fused.swiglu, (x, wg, wu, wd))


def test_rms_norm_matches_transformers_arithmetic_and_passes_gradcheck():
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    ref = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert torch.equal(cpu_fused.rms_norm(x, w, 1e-5), ref)
    assert torch.autograd.gradcheck(lambda a, b: cpu_fused.rms_norm(a, b, 1e-5), (x, w))


def test_enabled_only_for_fp32_cpu_eager():
    x = torch.randn(2, 3)
    assert cpu_fused.enabled(x)
    assert not cpu_fused.enabled(x.double()) and not cpu_fused.enabled(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_fused.enabled(x)


def loss_and_grads(model, idx, tgt):
    model.zero_grad(set_to_none=True)
    loss = model(idx, tgt)[1]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("n_kv_head", [4, 2])
@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "no-kernels"])
def test_swapped_model_equals_the_pure_one(monkeypatch, n_kv_head, kernels):
    """Loss and every parameter gradient within 1e-6; the same state dict, key for key.
    Without the kernels (MLSCALE_CPU_KERNELS=0) the swap takes its one-matmul path."""
    torch.manual_seed(0)
    pure = build(n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=32, seq_len=16, vocab_size=37)
    fused = fused_copy(pure)
    if not kernels:
        monkeypatch.setattr(cpu_fused, "enabled", lambda x: False)
    assert isinstance(fused.blocks[0].attn, FusedAttention) and isinstance(fused.norm, FusedRMSNorm)
    assert isinstance(fused.blocks[1].mlp, FusedSwiGLU) and type(pure.blocks[0].attn) is Attention
    assert list(fused.state_dict()) == list(pure.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fused.state_dict().values(), pure.state_dict().values()))
    idx, tgt = torch.randint(0, 37, (3, 16)), torch.randint(0, 37, (3, 16))
    assert torch.allclose(fused(idx)[0], pure(idx)[0], atol=1e-6, rtol=0)
    fused_loss, fused_grads = loss_and_grads(fused, idx, tgt)
    loss, grads = loss_and_grads(pure, idx, tgt)
    assert torch.allclose(fused_loss, loss, atol=1e-6, rtol=0)
    assert fused_grads.keys() == grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(fused_grads[name], grad, atol=1e-6, rtol=0), name


def test_the_swap_goes_through_the_family_once_and_keeps_parameters():
    torch.manual_seed(0)
    model = build(n_layer=2, n_head=2, d_model=16, seq_len=8, vocab_size=11)
    params = {n: p for n, p in model.named_parameters()}
    family = get_family("llama")
    assert family.fuse_cpu(model) == 9
    assert family.fuse_cpu(model) == 0  # already swapped
    assert all(p is params[n] for n, p in model.named_parameters())
    assert isinstance(model.blocks[0].attn_norm, RMSNorm) and isinstance(model.blocks[0].mlp, SwiGLU)


def test_fused_path_is_taken_and_attention_kernel_counted(monkeypatch):
    """The kernels run in the swapped model (not in the pure one); FLOPs counted as SDPA's."""
    from torch.utils.flop_counter import FlopCounterMode

    calls = []
    for name in ("rms_norm", "qkv_rope", "swiglu", "causal_attention"):
        fn = getattr(cpu_fused, name)
        monkeypatch.setattr(cpu_fused, name, lambda *a, _f=fn, _n=name: calls.append(_n) or _f(*a))
    torch.manual_seed(0)
    pure = build(n_layer=1, n_head=2, d_model=16, seq_len=8, vocab_size=11)
    idx = torch.randint(0, 11, (2, 8))
    pure(idx, idx)[1].backward()
    assert calls == []
    fused = fused_copy(pure)
    with FlopCounterMode(display=False) as counter:
        fused(idx, idx)[1].backward()
    assert sorted(set(calls)) == ["causal_attention", "qkv_rope", "rms_norm", "swiglu"]
    assert counter.get_total_flops() / idx.numel() == fused.flops_per_token(8)


def test_hooked_or_replaced_projections_take_the_module_path():
    """Hooks (tensor parallelism) or LoRA on a projection: the swapped module calls the
    layers one by one, with the pure model's results and gradients."""
    from mlscale.model.lora import LoraConfig, apply_lora

    torch.manual_seed(0)
    pure = build(n_layer=2, n_head=4, n_kv_head=2, d_model=64, seq_len=32, vocab_size=101,
                 tie_embeddings=False).train()
    hooked = fused_copy(pure)
    calls = []
    for b in hooked.blocks:
        for lin in (b.attn.q_proj, b.mlp.up_proj):
            lin.register_forward_hook(lambda mod, args, out: calls.append(1))
    idx = torch.randint(0, 101, (2, 24))
    (la, loss_a), (lb, loss_b) = pure(idx, idx), hooked(idx, idx)
    assert len(calls) == 2 * pure.cfg.n_layer  # the hooks ran: the module path was taken
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
    loss_a.backward()
    loss_b.backward()
    for (name, pa), pb in zip(pure.named_parameters(), hooked.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
    lora_pure, lora_fused = copy.deepcopy(pure), fused_copy(pure)
    for m in (lora_pure, lora_fused):
        apply_lora(m, LoraConfig(r=2, targets=["q", "gate", "down"]))
    torch.testing.assert_close(lora_fused(idx)[0], lora_pure(idx)[0], rtol=0, atol=1e-5)


def test_training_after_an_inference_mode_forward():
    """Nothing built during an inference-mode forward may leak into training."""
    torch.manual_seed(0)
    model = fused_copy(build(n_layer=1, n_head=2, d_model=16, seq_len=8, vocab_size=11))
    idx = torch.randint(0, 11, (2, 8))
    with torch.inference_mode():
        model(idx)
    model(idx, idx)[1].backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("layout", ["odd-offset", "time-major"])
def test_q_gradients_in_any_layout_give_the_composite_gradient(layout):
    """Attention's backward may hand over q/k/v gradients as views with other strides."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, requires_grad=True)
    ws = [torch.randn(2 * 4, 8), torch.randn(4, 8), torch.randn(4, 8)]
    q, k, v = cpu_fused.qkv_rope(x, *ws, *rotary_tables(3, 4), 2, 1)
    if layout == "odd-offset":  # a view at an odd offset into a bigger buffer
        gq = torch.randn(1 + q.numel())[1:].view(q.shape)
        assert gq.storage_offset() % 2 == 1
    else:  # [B, T, H, D] memory seen as [B, H, T, D]
        gq = torch.randn(2, 3, 2, 4).transpose(1, 2)
    gk, gv = torch.randn(k.shape), torch.randn(v.shape).transpose(2, 3).contiguous().transpose(2, 3)
    (gx,) = torch.autograd.grad((q, k, v), x, (gq, gk, gv))
    ref = composite_qkv(x, *ws, *rotary_tables(3, 4), 2, 1)
    (gx_ref,) = torch.autograd.grad(ref, x, (gq, gk, gv))
    assert torch.allclose(gx, gx_ref, atol=1e-5)


def test_second_derivatives_are_refused_not_wrong():
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(cpu_fused.rms_norm(x, w, 1e-5).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_one_position_row_for_the_whole_batch_takes_the_fused_path():
    torch.manual_seed(0)
    model = fused_copy(build(n_layer=1, n_head=2, d_model=16, seq_len=8, vocab_size=11))
    idx = torch.randint(0, 11, (2, 8))
    logits = model(idx, position_ids=torch.arange(8)[None])[0]
    assert torch.allclose(logits, model(idx)[0], atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # inside torch.func
def test_torch_func_transforms_take_the_composite_path():
    """vmap/jvp need rules the hand-written Functions do not define: the model steps aside."""
    norm = FusedRMSNorm(8, 1e-5)
    x = torch.randn(3, 4, 8)
    assert torch.allclose(torch.func.vmap(norm)(x), norm(x), atol=1e-6)
    _, tangent = torch.func.jvp(norm, (x,), (torch.ones_like(x),))
    assert tangent.shape == x.shape
