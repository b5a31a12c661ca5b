"""Hand-written backward passes for eager training on CPU.

On a CPU the matrix multiplies of a small model already run near the machine's peak
(MKL), so what a faster step can save is everything around them: autograd keeps a
node per elementwise op, the slices of a fused q/k/v projection come back as
zero-filled full-size gradients that are then summed, and rotate-half rotary
embeddings cost eight half-width passes and a concatenation. Each function here
computes one piece of the block with the arithmetic of the composite in `llama.py`
and writes its backward by hand: one matrix multiply per weight gradient, no zero
fills, no concatenations.

    qkv_rope     x -> q, k, v    one matmul for the three projections, rotary q and k
    swiglu       x -> mlp(x)     down(silu(gate(x)) * up(x)) with one gate/up matmul
    rms_norm     x -> norm(x)    RMSNorm without six autograd nodes

`llama.py` calls them only on CPU in fp32 eager mode (`enabled(x)`) with plain
nn.Linear weights; GPUs, torch.compile (which fuses these itself), autocast, LoRA,
quantised and tensor-parallel layers take the composite path. The backward passes are
not themselves differentiable (no second derivatives). Tests check each function against
autograd of the composite, and the whole model against transformers.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def enabled(x: Tensor) -> bool:
    """True where the hand-fused kernels apply: fp32 on CPU, eager, no autocast."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu"))


# ------------------------------------------------------------------------------ norm
class _RMSNorm(torch.autograd.Function):
    """y = x / rms(x) * w. Same arithmetic as transformers' LlamaRMSNorm in fp32."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return weight * xhat

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        xhat, rstd, weight = ctx.saved_tensors
        grad_w = (grad * xhat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        g = grad * weight
        # d/dx of x*rstd: rstd * (g - xhat * mean(g * xhat))
        grad_x = (g - xhat * (g * xhat).mean(-1, keepdim=True)).mul_(rstd)
        return grad_x, grad_w, None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return _RMSNorm.apply(x, weight, eps)


# ---------------------------------------------------------------------------- rotary
@functools.lru_cache(maxsize=None)
def _interleaving_rows(n_head: int, kv_heads: int, head_dim: int) -> Tensor:
    """Row order of the stacked [q; k; v] weights that makes q and k come out interleaved.

    Rotate-half pairs channel i with i + D/2 (transformers' layout); interleaved, the pair
    sits side by side as (2i, 2i+1), one complex number, and the rotation is a single
    complex multiply instead of eight half-width ops. Attention only sees dot products
    q . k, which the same permutation of both leaves unchanged, so it is never undone.
    """
    # cached for the life of the process: it must not become an inference tensor when
    # the first call happens under torch.inference_mode (backward could not save it)
    with torch.inference_mode(False):
        half = head_dim // 2
        within = torch.stack((torch.arange(half), torch.arange(half) + half), dim=-1).flatten()
        qk = (torch.arange(n_head + kv_heads)[:, None] * head_dim + within).flatten()
        v = torch.arange((n_head + kv_heads) * head_dim, (n_head + 2 * kv_heads) * head_dim)
        return torch.cat((qk, v))


def _complex(x: Tensor) -> Tensor:
    """[..., D] real with interleaved pairs -> [..., D/2] complex view of the same memory."""
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)))


def _complex_viewable(x: Tensor) -> Tensor:
    """x itself, or a copy where a complex view needs one: unit last stride, and an even
    storage offset and even other strides (an incoming gradient may be expanded, or a
    view torch calls contiguous with odd strides on size-1 dimensions)."""
    even = x.storage_offset() % 2 == 0 and all(st % 2 == 0 for st in x.stride()[:-1])
    return x if x.stride(-1) == 1 and even else x.clone(memory_format=torch.contiguous_format)


def _rotations(cos: Tensor, sin: Tensor) -> Tensor:
    """[(B,) T, D] rotary tables -> unit complex numbers [(B,) T, 1, D/2] (over heads)."""
    half = cos.shape[-1] // 2
    return torch.complex(cos[..., :half], sin[..., :half]).unsqueeze(-2)


# --------------------------------------------------------------------------- q, k, v
class _QKVRope(torch.autograd.Function):
    """q, k, v = rope(x Wq^T), rope(x Wk^T), x Wv^T in [B, heads, T, D] layout.

    q and k come out with interleaved rotary pairs (see `_interleaving_rows`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, cos: Tensor, sin: Tensor,
                n_head: int, kv_heads: int):
        B, T, C = x.shape
        H, KV = n_head, kv_heads
        D = wq.shape[0] // H
        rows = _interleaving_rows(H, KV, D).to(x.device)
        w = torch.cat((wq, wk, wv)).index_select(0, rows)
        qkv = torch.mm(x.reshape(B * T, C), w.t()).view(B, T, H + 2 * KV, D)
        rot = _rotations(cos, sin)
        # rotated q and k are written straight into the [B, heads, T, D] layout that
        # attention wants, so the transposes cost nothing extra
        q = x.new_empty(B, H, T, D)
        k = x.new_empty(B, KV, T, D)
        torch.mul(_complex(qkv[:, :, :H]), rot, out=_complex(q.transpose(1, 2)))
        torch.mul(_complex(qkv[:, :, H:H + KV]), rot, out=_complex(k.transpose(1, 2)))
        v = qkv[:, :, H + KV:].transpose(1, 2).contiguous()
        ctx.save_for_backward(x, w, rows, rot)
        ctx.heads = (H, KV)
        return q, k, v

    @staticmethod
    @once_differentiable
    def backward(ctx, gq: Tensor, gk: Tensor, gv: Tensor):
        x, w, rows, rot = ctx.saved_tensors
        H, KV = ctx.heads
        B, T, C = x.shape
        D = w.shape[0] // (H + 2 * KV)
        g = x.new_empty(B, T, H + 2 * KV, D)
        # a rotation's gradient is the inverse rotation: multiply by the conjugate
        back = rot.conj()
        gq, gk = _complex_viewable(gq), _complex_viewable(gk)
        torch.mul(_complex(gq.transpose(1, 2)), back, out=_complex(g[:, :, :H]))
        torch.mul(_complex(gk.transpose(1, 2)), back, out=_complex(g[:, :, H:H + KV]))
        g[:, :, H + KV:].copy_(gv.transpose(1, 2))
        g = g.view(B * T, -1)
        grad_x = torch.mm(g, w).view(B, T, C) if ctx.needs_input_grad[0] else None
        gw = (None,) * 3
        if any(ctx.needs_input_grad[1:4]):
            gw_rows = torch.empty_like(w).index_copy_(0, rows, torch.mm(g.t(), x.reshape(B * T, C)))
            gw = gw_rows.split((H * D, KV * D, KV * D))
        return grad_x, *gw, None, None, None, None


def qkv_rope(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, cos: Tensor, sin: Tensor,
             n_head: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Project x [B, T, C] to rotated q [B, H, T, D], rotated k and v [B, KV, T, D].

    q and k are in interleaved order within each head: use them for attention only.
    """
    return _QKVRope.apply(x, wq, wk, wv, cos, sin, n_head, kv_heads)


# ------------------------------------------------------------------------------- MLP
class _SwiGLU(torch.autograd.Function):
    """down(silu(x Wg^T) * (x Wu^T)) with gate and up in one matrix multiply."""

    @staticmethod
    def forward(ctx, x: Tensor, wg: Tensor, wu: Tensor, wd: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        w = torch.cat((wg, wu))
        F_ = wg.shape[0]
        h = torch.mm(x2, w.t())
        gate, up = h[:, :F_], h[:, F_:]
        act = torch.nn.functional.silu(gate)
        a = act * up
        ctx.save_for_backward(x2, w, wd, h, act, a)
        return torch.mm(a, wd.t()).view(*shape[:-1], wd.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x2, w, wd, h, act, a = ctx.saved_tensors
        F_ = act.shape[1]
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_wd = torch.mm(g2.t(), a) if ctx.needs_input_grad[3] else None
        ga = torch.mm(g2, wd)
        gh = torch.empty_like(h)
        torch.mul(ga, act, out=gh[:, F_:])  # d/d up
        torch.ops.aten.silu_backward.grad_input(ga.mul_(h[:, F_:]), h[:, :F_], grad_input=gh[:, :F_])
        grad_x = torch.mm(gh, w).view(grad.shape[:-1] + (x2.shape[1],)) if ctx.needs_input_grad[0] else None
        gw = (None, None)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gw = torch.mm(gh.t(), x2).split((F_, F_))
        return grad_x, *gw, grad_wd


def swiglu(x: Tensor, wg: Tensor, wu: Tensor, wd: Tensor) -> Tensor:
    """The SwiGLU MLP of x [..., C] with gate/up weights [F, C] and down weight [C, F]."""
    return _SwiGLU.apply(x, wg, wu, wd)
