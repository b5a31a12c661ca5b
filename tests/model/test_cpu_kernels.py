"""The compiled CPU kernels against the same arithmetic in PyTorch ops (float64)."""
import os
import subprocess
import sys

import pytest
import torch

from mlscale.model.kernels import cpu_fused, cpu_kernels
from mlscale.model.layers import RotaryEmbedding


@pytest.fixture
def ops():
    built = cpu_kernels.native()
    assert built is not None, "the fused CPU kernels did not build: is a C++ compiler (g++) installed?"
    return built


@pytest.fixture
def reference(monkeypatch):
    """Call a cpu_kernels function in float64 through its PyTorch fallback."""
    def call(name, *args):
        with monkeypatch.context() as m:
            m.setattr(cpu_kernels, "native", lambda: None)
            return getattr(cpu_kernels, name)(*(a.double() if torch.is_tensor(a) and a.is_floating_point() else a
                                                for a in args))
    return call


def close(a, b, tol=1e-5):
    b = b.to(a.dtype)
    assert a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()


def test_the_kernels_build_here(ops):
    assert hasattr(ops, "swiglu_forward") and hasattr(ops, "qkv_rope_backward")


def test_rms_norm_backward_matches_the_reference(ops, reference):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 70, 96, generator=g) * 3
    w = torch.rand(96, generator=g) + 0.5
    grad = torch.randn(x.shape, generator=g)
    gx, gw = cpu_kernels.rms_norm_backward(grad, x, w, 1e-5)
    gx_ref, gw_ref = reference("rms_norm_backward", grad, x, w, 1e-5)
    close(gx, gx_ref)
    close(gw, gw_ref, tol=1e-4)  # a sum over 210 rows


def test_rms_norm_forward_equals_transformers_arithmetic_bit_for_bit():
    # transformers' LlamaRMSNorm in fp32: what the export-parity test relies on
    x = torch.randn(64, 48) * 2
    w = (torch.rand(48) + 0.5).requires_grad_()
    hf = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert torch.equal(cpu_fused.rms_norm(x, w, 1e-6), hf)


def test_rms_norm_weight_gradient_is_the_same_on_every_run(ops):
    x, grad = torch.randn(257, 64), torch.randn(257, 64)
    w = torch.rand(64)
    first = cpu_kernels.rms_norm_backward(grad, x, w, 1e-5)
    for _ in range(3):
        again = cpu_kernels.rms_norm_backward(grad, x, w, 1e-5)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_swiglu_forward_and_backward_match_the_reference(ops, reference):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(50, 2 * 37, generator=g) * 4  # an odd width: the vector loops' tails
    grad = torch.randn(50, 37, generator=g)
    a, sig = cpu_kernels.swiglu_forward(h)
    a_ref, sig_ref = reference("swiglu_forward", h)
    close(a, a_ref)
    close(sig, sig_ref)
    close(cpu_kernels.swiglu_backward(grad, h, sig), reference("swiglu_backward", grad, h, sig_ref))


def test_swiglu_saturates_cleanly_and_keeps_nan(ops):
    gate = torch.tensor([-1e4, -100.0, -88.5, -20.0, 0.0, 20.0, 88.5, 100.0, 1e4, float("nan")])
    a, sig = cpu_kernels.swiglu_forward(torch.cat((gate, torch.ones_like(gate)))[None])
    close(sig[0, :-1], torch.sigmoid(gate[:-1].double()), tol=1e-6)
    close(a[0, :-1], torch.nn.functional.silu(gate[:-1].double()), tol=1e-6)
    assert torch.isnan(a[0, -1]) and torch.isnan(sig[0, -1])
    assert torch.isfinite(a[0, :-1]).all()


def test_sigmoid_is_within_a_few_ulp_of_pytorch(ops):
    gate = torch.linspace(-30, 30, 100_001)
    _, sig = cpu_kernels.swiglu_forward(torch.cat((gate, torch.ones_like(gate)))[None])  # [gate | up]
    ref = torch.sigmoid(gate.double())
    assert ((sig[0].double() - ref).abs() / ref).max() < 4 * torch.finfo(torch.float32).eps


@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("packed", [False, True])
def test_qkv_rope_forward_and_backward_match_the_reference(ops, reference, H, KV, packed):
    g = torch.Generator().manual_seed(H + KV)
    B, T, D = 2, 9, 12
    rope = RotaryEmbedding(D, 32, 10000.0)
    positions = torch.randint(0, 32, (B, T), generator=g) if packed else None
    cos, sin = rope(3, T, positions)
    qkv = torch.randn(B, T, H + 2 * KV, D, generator=g)
    out = cpu_kernels.qkv_rope_forward(qkv, cos, sin, H, KV)
    out_ref = reference("qkv_rope_forward", qkv, cos, sin, H, KV)
    for a, b in zip(out, out_ref):
        close(a, b)
    # gradients as attention's backward may give them: q time-major, k contiguous, v strided
    gq = torch.randn(B, T, H, D, generator=g).transpose(1, 2)
    gk = torch.randn(B, KV, T, D, generator=g)
    gv = torch.randn(B, KV, D, T, generator=g).transpose(2, 3)
    close(cpu_kernels.qkv_rope_backward(gq, gk, gv, cos, sin), reference("qkv_rope_backward", gq, gk, gv, cos, sin))


def test_bad_inputs_get_a_clear_error(ops):
    with pytest.raises(RuntimeError, match="float32 CPU tensor"):
        ops.swiglu_forward(torch.randn(4, 6, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="rotary tables"):
        ops.qkv_rope_forward(torch.randn(1, 5, 3, 4), torch.randn(4, 4), torch.randn(4, 4), 1, 1)


def test_without_a_compiler_training_falls_back_with_one_warning(tmp_path):
    # a fresh process: this one has the kernels loaded already
    script = (
        "import torch\n"
        "from mlscale.model.llama import LlamaConfig\n"
        "from mlscale.model.registry import get_family\n"
        "from mlscale.model.kernels import cpu_kernels\n"
        "family = get_family('llama')\n"
        "model = family.build(LlamaConfig(n_layer=1, n_head=2, d_model=16, seq_len=8, vocab_size=11))\n"
        "assert family.fuse_cpu(model) == 5  # two norms, attention, MLP, final norm\n"
        "idx = torch.randint(0, 11, (2, 8))\n"
        "for _ in range(2):\n"
        "    model(idx, idx)[1].backward()\n"
        "assert cpu_kernels.native() is None\n"
        "assert all(torch.isfinite(p.grad).all() for p in model.parameters())\n"
        "print('trained')\n"
    )
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), CXX=str(tmp_path / "no-such-compiler"))
    env.pop("MLSCALE_CPU_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "trained" in out.stdout, out.stderr[-3000:]
    assert out.stderr.count("could not build the fused CPU kernels") == 1, out.stderr[-3000:]


def test_the_environment_switch_turns_them_off(monkeypatch):
    cpu_kernels.native.cache_clear()
    try:
        monkeypatch.setenv("MLSCALE_CPU_KERNELS", "0")
        assert cpu_kernels.native() is None
    finally:
        cpu_kernels.native.cache_clear()
        monkeypatch.delenv("MLSCALE_CPU_KERNELS")
        assert cpu_kernels.native() is not None  # and back on, loaded once more without error


@pytest.mark.parametrize("H,KV,T,D", [(4, 4, 64, 32), (4, 2, 12, 8), (6, 1, 20, 16), (2, 2, 4, 64)])
def test_causal_attention_matches_sdpa_in_float64(ops, H, KV, T, D):
    g = torch.Generator().manual_seed(T + D)
    q = torch.randn(3, H, T, D, generator=g) * 2
    k, v = (torch.randn(3, KV, T, D, generator=g) * 2 for _ in range(2))
    grad = torch.randn(3, H, T, D, generator=g)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q64, k64, v64, is_causal=True, enable_gqa=KV != H)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), grad.double())
    out, lse = cpu_kernels.causal_attention_forward(q, k, v)
    # the layout the output projection reads: [B, T, H, D] memory
    assert out.transpose(1, 2).is_contiguous()
    close(out, ref)
    grads = cpu_kernels.causal_attention_backward(grad, q, k, v, out, lse)
    for ours, theirs in zip(grads, ref_grads):
        close(ours, theirs, tol=2e-5)


def test_causal_attention_reference_matches_sdpa(reference):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    out, lse = reference("causal_attention_forward", q, k, v)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(out, sdpa, atol=1e-12)


def test_causal_attention_gradient_in_any_layout(ops):
    q, k, v = torch.randn(2, 2, 8, 8), torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    out, lse = cpu_kernels.causal_attention_forward(q, k, v)
    grad = torch.randn(2, 8, 2, 8)
    a = cpu_kernels.causal_attention_backward(grad.transpose(1, 2), q, k, v, out, lse)
    b = cpu_kernels.causal_attention_backward(grad.transpose(1, 2).contiguous(), q, k, v, out, lse)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_causal_attention_refuses_shapes_it_does_not_tile(ops):
    with pytest.raises(RuntimeError, match="T divisible by 4 and D by 8"):
        ops.causal_attention_forward(torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8))


@pytest.mark.parametrize("H,KV,T,D", [(2, 1, 12, 8), (4, 1, 20, 16), (4, 2, 36, 24)])
def test_attention_function_in_fp32_against_float64_autograd(ops, H, KV, T, D):
    """The autograd Function the model calls, on the compiled kernel, against SDPA in float64."""
    g = torch.Generator().manual_seed(H * T + D)
    q = torch.randn(1, H, T, D, generator=g, requires_grad=True)
    k, v = (torch.randn(1, KV, T, D, generator=g, requires_grad=True) for _ in range(2))
    out = cpu_fused.causal_attention(q, k, v)
    grad = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q64, k64, v64, is_causal=True, enable_gqa=KV != H)
    close(out, ref)
    for ours, theirs in zip(grads, torch.autograd.grad(ref, (q64, k64, v64), grad.double())):
        close(ours, theirs, tol=2e-5)


def test_results_do_not_depend_on_the_thread_count(ops):
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(3, 4, 20, 8, generator=g), torch.randn(3, 2, 20, 8, generator=g), torch.randn(3, 2, 20, 8, generator=g)
    x, grad, w = torch.randn(300, 40, generator=g), torch.randn(300, 40, generator=g), torch.rand(40, generator=g)
    threads = torch.get_num_threads()

    def run():
        out, lse = ops.causal_attention_forward(q, k, v)
        return (out, *ops.causal_attention_backward(torch.ones_like(out), q, k, v, out, lse),
                *ops.rms_norm_backward(grad, x, w, 1e-5))

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_mismatched_or_empty_shapes_are_refused_not_read_out_of_bounds(ops):
    q = k = v = torch.randn(1, 1, 64, 8)
    out, lse = ops.causal_attention_forward(q, k, v)
    small = torch.randn(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="shaped like q"):
        ops.causal_attention_backward(small, q, k, v, small, lse)
    with pytest.raises(RuntimeError, match="width > 0"):
        ops.swiglu_forward(torch.randn(3, 0))
    with pytest.raises(RuntimeError, match="width > 0"):
        ops.rms_norm_backward(torch.randn(3, 0), torch.randn(3, 0), torch.randn(0), 1e-5)
    with pytest.raises(RuntimeError, match="KV dividing H"):
        ops.causal_attention_forward(q, torch.randn(1, 0, 64, 8), torch.randn(1, 0, 64, 8))
