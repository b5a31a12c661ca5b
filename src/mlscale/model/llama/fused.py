"""The fused CPU path of the Llama, applied from outside by swapping module classes.

`apply_cpu_kernels(model)` turns every RMSNorm, Attention and SwiGLU of a built Llama
into the subclass below, in place (the `__class__` swap FSDP2 uses too): parameters,
buffers, hooks and state-dict keys stay exactly as they were; only `forward` changes.
Each forward decides at run time, on every call:

- fp32 eager on CPU with the C++ kernels built (`cpu_fused.enabled`) and plain nn.Linear
  projections: hand-written backward passes and fused kernels (`model/kernels/`);
- otherwise, with plain projections: q/k/v (and gate/up) as one matrix multiply over
  their concatenated weights (fewer, larger kernels; the parameters stay separate);
- LoRA, quantised or hooked projections (tensor parallelism redistributes through
  hooks, FSDP holds DTensors): the model's own code, module by module.

The trainer calls it after building the model and before LoRA, tensor parallelism,
activation checkpointing, compile and DDP/FSDP; the results equal the pure model's
within float rounding (tests check forward and gradients).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlscale.model.kernels import cpu_fused
from mlscale.model.layers import RMSNorm, SwiGLU, apply_rotary, attention
from mlscale.model.llama.model import Attention, KVCache
from mlscale.model.swap import plain_linears, swap_classes


def _plain(*linears: nn.Module) -> bool:
    """Plain projections (`plain_linears`) without biases, as the Llama's are."""
    return plain_linears(*linears) and all(m.bias is None for m in linears)


class FusedRMSNorm(RMSNorm):
    """RMSNorm with a one-pass backward kernel where it applies."""

    def forward(self, x: Tensor) -> Tensor:
        if cpu_fused.enabled(x):
            return cpu_fused.rms_norm(x, self.weight, self.eps)
        return super().forward(x)


class FusedAttention(Attention):
    """Attention with one q/k/v matmul, fused rotary and short-context causal attention."""

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, causal: bool,
                kv_cache: KVCache | None = None) -> Tensor:
        if not _plain(self.q_proj, self.k_proj, self.v_proj):
            return super().forward(x, cos, sin, mask, causal, kv_cache)
        B, T, _ = x.shape
        H, KV, D = self.n_head, self.kv_heads, self.head_dim
        fused = kv_cache is None and cpu_fused.enabled(x)
        if fused:  # hand-written backward
            q, k, v = cpu_fused.qkv_rope(x, self.q_proj.weight, self.k_proj.weight,
                                         self.v_proj.weight, cos, sin, H, KV)
        else:
            # one matmul for q, k and v instead of three (forward and backward) and one
            # rotation for q and k together. The weights' concat is a small copy next to
            # the activations; its backward splits the grads.
            w = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
            qkv = F.linear(x, w).view(B, T, H + 2 * KV, D)
            qk = apply_rotary(qkv[:, :, :H + KV], cos, sin)
            q, k, v = qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + KV:]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        if fused and mask is None and causal and dropout == 0 and cpu_fused.causal_attention_fits(T, D):
            # its output is a [B, H, T, D] view of [B, T, H, D] memory: the reshape below is free
            y = cpu_fused.causal_attention(q, k, v)
        else:
            if kv_cache is not None:
                k, v = kv_cache.update(self.layer, k, v)
            y = attention(q, k, v, causal=causal, mask=mask, dropout_p=dropout)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


class FusedSwiGLU(SwiGLU):
    """SwiGLU with one gate/up matmul and a hand-written backward where it applies."""

    def forward(self, x: Tensor) -> Tensor:
        if _plain(self.gate_proj, self.up_proj, self.down_proj) and cpu_fused.enabled(x):
            return cpu_fused.swiglu(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
        if not _plain(self.gate_proj, self.up_proj):
            return super().forward(x)
        gate, up = F.linear(x, torch.cat((self.gate_proj.weight, self.up_proj.weight))).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


# exact class -> its fused subclass
_SWAPS: dict[type, type] = {RMSNorm: FusedRMSNorm, Attention: FusedAttention, SwiGLU: FusedSwiGLU}


def apply_cpu_kernels(model: nn.Module) -> int:
    """Swap the Llama's norms, attention and MLP modules for their fused subclasses in
    place; returns how many modules were swapped (0 when applied a second time)."""
    return swap_classes(model, _SWAPS)
