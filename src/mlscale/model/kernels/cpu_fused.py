"""Hand-written backward passes for eager training on CPU.

On a CPU the matrix multiplies of a small model already run near the machine's peak
(MKL), so what a faster step can save is everything around them: autograd keeps a
node per elementwise op, the slices of a fused q/k/v projection come back as
zero-filled full-size gradients that are then summed, and rotate-half rotary
embeddings cost eight half-width passes and a concatenation. Each function here is one
piece of the block with the arithmetic of the composite in `model/layers.py`, as one
autograd node: one matrix multiply per weight gradient, and the elementwise work in
between done by the fused kernels of `cpu_kernels` (one pass over memory each).

    qkv_rope     x -> q, k, v    one matmul for the three projections, rotary q and k
    swiglu       x -> mlp(x)     down(silu(gate(x)) * up(x)) with one gate/up matmul
    rms_norm     x -> norm(x)    RMSNorm in one pass forward and one backward
    causal_attention             short-context causal attention, rows' log-sum-exp kept

A family's module swap (`model/llama/fused.py`) calls them only on CPU in fp32 eager
mode (`enabled(x)`) with plain nn.Linear weights; GPUs, torch.compile (which fuses these
itself), autocast, LoRA, quantised and tensor-parallel layers take the composite path.
The backward passes are not themselves differentiable (no second derivatives). Tests
check each function against autograd of the composite, and the whole model against
transformers.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mlscale.model.kernels import cpu_kernels


def enabled(x: Tensor) -> bool:
    """True where the hand-fused kernels apply: fp32 on CPU, eager, no autocast, and the
    compiled kernels built (their PyTorch-op fallbacks are slower than plain autograd)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
            # vmap/jvp/grad of torch.func need rules these Functions do not define
            and not torch._C._are_functorch_transforms_active()
            and cpu_kernels.native() is not None)


# ------------------------------------------------------------------------------ norm
class _RMSNorm(torch.autograd.Function):
    """y = x / rms(x) * w. Same arithmetic as transformers' LlamaRMSNorm in fp32."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        # PyTorch's own RMSNorm gives transformers' fp32 result bit for bit (its float mean
        # and rsqrt round differently from a loop and 1/sqrt; export parity allows 1e-5)
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return torch.nn.functional.rms_norm(x, weight.shape, weight, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x, grad_w = cpu_kernels.rms_norm_backward(grad, x, weight, ctx.eps)
        return grad_x, grad_w if ctx.needs_input_grad[1] else None, None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return _RMSNorm.apply(x, weight, eps)


# --------------------------------------------------------------------------- q, k, v
class _QKVRope(torch.autograd.Function):
    """q, k, v = rope(x Wq^T), rope(x Wk^T), x Wv^T in [B, heads, T, D] layout."""

    @staticmethod
    def forward(ctx, x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, cos: Tensor, sin: Tensor,
                n_head: int, kv_heads: int):
        B, T, C = x.shape
        H, KV = n_head, kv_heads
        D = wq.shape[0] // H
        if cos.dim() == 3 and cos.shape[0] == 1:  # position_ids [1, T]: one table for the batch
            cos, sin = cos[0], sin[0]
        w = torch.cat((wq, wk, wv))
        qkv = torch.mm(x.reshape(B * T, C), w.t()).view(B, T, H + 2 * KV, D)
        # rotated q and k are written straight into the [B, heads, T, D] layout that
        # attention wants, so the transposes cost nothing extra
        q, k, v = cpu_kernels.qkv_rope_forward(qkv, cos, sin, H, KV)
        ctx.save_for_backward(x, w, cos, sin)
        ctx.heads = (H, KV)
        return q, k, v

    @staticmethod
    @once_differentiable
    def backward(ctx, gq: Tensor, gk: Tensor, gv: Tensor):
        x, w, cos, sin = ctx.saved_tensors
        H, KV = ctx.heads
        B, T, C = x.shape
        D = w.shape[0] // (H + 2 * KV)
        g = cpu_kernels.qkv_rope_backward(gq, gk, gv, cos, sin).view(B * T, -1)
        grad_x = torch.mm(g, w).view(B, T, C) if ctx.needs_input_grad[0] else None
        gw = (None,) * 3
        if any(ctx.needs_input_grad[1:4]):
            gw = torch.mm(g.t(), x.reshape(B * T, C)).split((H * D, KV * D, KV * D))
        return grad_x, *gw, None, None, None, None


def qkv_rope(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, cos: Tensor, sin: Tensor,
             n_head: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Project x [B, T, C] to rotated q [B, H, T, D], rotated k and v [B, KV, T, D]."""
    return _QKVRope.apply(x, wq, wk, wv, cos, sin, n_head, kv_heads)


# ------------------------------------------------------------------------------- MLP
class _SwiGLU(torch.autograd.Function):
    """down(silu(x Wg^T) * (x Wu^T)) with gate and up in one matrix multiply."""

    @staticmethod
    def forward(ctx, x: Tensor, wg: Tensor, wu: Tensor, wd: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        w = torch.cat((wg, wu))
        h = torch.mm(x2, w.t())
        a, sig = cpu_kernels.swiglu_forward(h)
        ctx.save_for_backward(x2, w, wd, h, sig, a)
        return torch.mm(a, wd.t()).view(*shape[:-1], wd.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x2, w, wd, h, sig, a = ctx.saved_tensors
        F_ = sig.shape[1]
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_wd = torch.mm(g2.t(), a) if ctx.needs_input_grad[3] else None
        gh = cpu_kernels.swiglu_backward(torch.mm(g2, wd), h, sig)
        grad_x = torch.mm(gh, w).view(grad.shape[:-1] + (x2.shape[1],)) if ctx.needs_input_grad[0] else None
        gw = (None, None)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gw = torch.mm(gh.t(), x2).split((F_, F_))
        return grad_x, *gw, grad_wd


def swiglu(x: Tensor, wg: Tensor, wu: Tensor, wd: Tensor) -> Tensor:
    """The SwiGLU MLP of x [..., C] with gate/up weights [F, C] and down weight [C, F]."""
    return _SwiGLU.apply(x, wg, wu, wd)


# ------------------------------------------------------------------------- attention
class _CausalAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(D) + causal mask) v, keeping each row's log-sum-exp for backward."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out, lse = cpu_kernels.causal_attention_forward(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return cpu_kernels.causal_attention_backward(grad, *ctx.saved_tensors)


# Above this length SDPA's tiled flash kernel is as fast (measured at T=256, D=64)
MAX_FUSED_ATTENTION_LEN = 256


def causal_attention_fits(seq_len: int, head_dim: int) -> bool:
    """Whether `causal_attention` takes this shape: the kernel's row blocks and vectors."""
    return seq_len % 4 == 0 and head_dim % 8 == 0 and seq_len <= MAX_FUSED_ATTENTION_LEN


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of q [B, H, T, D] over k, v [B, KV, T, D] (grouped-query heads when
    KV < H); the output is a [B, H, T, D] view of [B, T, H, D] memory."""
    return _CausalAttention.apply(q, k, v)
