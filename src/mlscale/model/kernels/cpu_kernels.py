"""Fused CPU kernels for RMSNorm, SwiGLU and rotary, compiled on first use.

`cpu_kernels.cpp` does each elementwise piece of the block in one pass over memory; it is
built once per machine with the C++ compiler PyTorch extensions use (cached under
torch's extension directory, about 15 s) and loaded as `torch.ops.mlscale`. Where no
compiler is found (one warning), or with MLSCALE_CPU_KERNELS=0, `native()` is None and
the model takes its plain autograd path. Each function below also holds the same
arithmetic in PyTorch ops: the reference the tests compare the kernels against, and what
runs for other dtypes.

    rms_norm_backward(grad, x, w, eps) -> grad_x, grad_w   (forward: F.rms_norm, one pass)
    swiglu_forward(h)                  -> a = silu(gate) * up, sigmoid(gate)   (h = [gate | up])
    swiglu_backward(grad_a, h, sig)    -> grad_h
    qkv_rope_forward(qkv, cos, sin, H, KV)   -> rotated q, rotated k, v in [B, heads, T, D]
    qkv_rope_backward(gq, gk, gv, cos, sin)  -> grad of qkv [B, T, H + 2 KV, D]
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mlscale.model.layers import apply_rotary  # the models' own rotary: the reference

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")


def _compiler_flags() -> list[str]:
    # AVX2/FMA code only where torch itself runs AVX2 or better; no -march=native, so a
    # build cached in a home directory shared by a cluster's nodes runs on all of them
    capability = torch.backends.cpu.get_cpu_capability()
    vector = ["-mavx2", "-mfma"] if capability.startswith("AVX") else []
    # -fno-trapping-math lets the compiler vectorise clamps (results are unchanged);
    # -ffp-contract=off keeps a * b + c two roundings, as in PyTorch's own kernels
    return ["-O3", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp", *vector]


def _put_ninja_on_path() -> None:
    """torch builds with the `ninja` command; the pip package's binary sits in the venv,
    which is not on PATH when the venv's python is run without activating it."""
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


@functools.cache  # once per process: a second registration is an error
def _register_flop_formulas() -> None:
    """Attention's model FLOPs in torch's FlopCounterMode, as SDPA's math path counts them:
    two matmuls forward, four backward (recomputing the scores is not model work, as in
    MFU). The other kernels are elementwise, which the counter does not count either."""
    from torch.utils import flop_counter

    @flop_counter.register_flop_formula(torch.ops.mlscale.causal_attention_forward)
    def _forward(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(q_shape, k_shape, v_shape)

    @flop_counter.register_flop_formula(torch.ops.mlscale.causal_attention_backward)
    def _backward(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * flop_counter.sdpa_flop_count(q_shape, k_shape, v_shape)


@functools.cache
def native() -> Any | None:
    """`torch.ops.mlscale` with the compiled kernels, or None where they cannot be built."""
    if os.environ.get("MLSCALE_CPU_KERNELS", "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import get_default_build_root, load

        # one build per source, flags, CPU capability, Python and torch version: a build
        # against another torch's ABI would not load, and two checkouts of mlscale on one
        # machine must not overwrite each other's build (TORCH_EXTENSIONS_DIR moves the root)
        flags = _compiler_flags()
        digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
        name = f"mlscale_cpu_kernels_{torch.backends.cpu.get_cpu_capability().lower()}_{digest}"
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
        build = (Path(root) / "mlscale"
                 / f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}" / name)
        build.mkdir(parents=True, exist_ok=True)
        _put_ninja_on_path()
        if not (build / f"{name}.so").exists():
            print("mlscale: compiling the fused CPU kernels (once per machine, ~15 s)", file=sys.stderr, flush=True)
        load(name=name, sources=[str(SOURCE)], build_directory=str(build), extra_cflags=flags,
             extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
        _register_flop_formulas()
        return torch.ops.mlscale
    except Exception as exc:  # no compiler, no ninja, a failed build: fall back, say so once
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        warnings.warn(f"mlscale: could not build the fused CPU kernels ({first}); training on CPU takes "
                      "the plain autograd path instead, about 20% slower. Install a C++ compiler (g++) "
                      "to get them, or set MLSCALE_CPU_KERNELS=0 to silence this.", stacklevel=2)
        return None


# ----------------------------------------------------------------------------- RMSNorm
def rms_norm_backward(grad: Tensor, x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Gradients for x and weight of y = weight * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps)."""
    ops = native()
    if ops is not None and x.dtype == torch.float32:
        grad_x, grad_w = ops.rms_norm_backward(grad, x, weight, eps)
        return grad_x.view(x.shape), grad_w
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
    xhat = x * rstd
    grad_w = (grad * xhat).flatten(0, -2).sum(0)
    g = grad * weight
    grad_x = (g - xhat * (g * xhat).mean(-1, keepdim=True)).mul_(rstd)
    return grad_x, grad_w


# ------------------------------------------------------------------------------ SwiGLU
def swiglu_forward(h: Tensor) -> tuple[Tensor, Tensor]:
    """h = [gate | up] rows [N, 2F] -> (silu(gate) * up, sigmoid(gate)), each [N, F]."""
    ops = native()
    if ops is not None and h.dtype == torch.float32:
        return ops.swiglu_forward(h)
    gate, up = h.chunk(2, dim=-1)
    sig = torch.sigmoid(gate)
    return gate * sig * up, sig


def swiglu_backward(grad: Tensor, h: Tensor, sig: Tensor) -> Tensor:
    """Gradient of `swiglu_forward`'s first output for h, given its gradient [N, F]."""
    ops = native()
    if ops is not None and h.dtype == torch.float32:
        return ops.swiglu_backward(grad, h, sig)
    gate, up = h.chunk(2, dim=-1)
    return torch.cat((grad * up * (sig * (1 + gate * (1 - sig))), grad * (gate * sig)), dim=-1)


# ------------------------------------------------------------------------------ rotary
def qkv_rope_forward(qkv: Tensor, cos: Tensor, sin: Tensor, n_head: int,
                     kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """qkv [B, T, n_head + 2 kv_heads, D] -> rotated q [B, H, T, D], rotated k and v [B, KV, T, D].

    Rotate-half rotary (transformers' layout) with tables cos/sin [T, D] or [B, T, D].
    """
    ops = native()
    if ops is not None and qkv.dtype == torch.float32:
        return ops.qkv_rope_forward(qkv, cos, sin, n_head, kv_heads)

    H, KV = n_head, kv_heads
    qk = apply_rotary(qkv[:, :, :H + KV], cos, sin)
    return tuple(part.transpose(1, 2).contiguous() for part in (qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + KV:]))


def qkv_rope_backward(grad_q: Tensor, grad_k: Tensor, grad_v: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Gradient of `qkv_rope_forward` for qkv: [B, T, n_head + 2 kv_heads, D]."""
    ops = native()
    if ops is not None and grad_q.dtype == torch.float32:
        return ops.qkv_rope_backward(grad_q, grad_k, grad_v, cos, sin)
    # a rotation's gradient is the inverse rotation: the same angles, negated
    gqk = apply_rotary(torch.cat((grad_q, grad_k), dim=1).transpose(1, 2), cos, -sin)
    return torch.cat((gqk, grad_v.transpose(1, 2)), dim=2)


# --------------------------------------------------------------------------- attention
def causal_attention_forward(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Causal softmax attention: q [B, H, T, D], k and v [B, KV, T, D] (KV divides H) ->
    out [B, H, T, D] (a view of [B, T, H, D] memory), and the rows' log-sum-exp [B, H, T]."""
    ops = native()
    if ops is not None and q.dtype == torch.float32:
        return ops.causal_attention_forward(q, k, v)
    s = _attention_scores(q, k)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.exp(s - lse.unsqueeze(-1)) @ v.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    return out.transpose(1, 2).contiguous().transpose(1, 2), lse


def causal_attention_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                              lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of `causal_attention_forward`'s output for q, k and v."""
    ops = native()
    if ops is not None and q.dtype == torch.float32:
        return ops.causal_attention_backward(grad, q, k, v, out, lse)
    rep = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5
    p = torch.exp(_attention_scores(q, k) - lse.unsqueeze(-1))
    kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    dv = (p.transpose(-1, -2) @ grad).unflatten(1, (-1, rep)).sum(2)
    dp = grad @ vr.transpose(-1, -2)
    ds = p * (dp - (grad * out).sum(-1, keepdim=True)) * scale
    dq = ds @ kr
    dk = (ds.transpose(-1, -2) @ q).unflatten(1, (-1, rep)).sum(2)
    return dq, dk, dv


def _attention_scores(q: Tensor, k: Tensor) -> Tensor:
    """Scaled causal scores [B, H, T, T], -inf above the diagonal."""
    T = q.shape[2]
    kr = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = (q @ kr.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
