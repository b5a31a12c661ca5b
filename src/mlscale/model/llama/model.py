"""A LLaMA-style decoder, readable top to bottom.

    tokens -> embed -> n_layer x Block -> norm -> lm_head -> logits

    Block:  x = x + attn(attn_norm(x))      RMSNorm, rotary embeddings, grouped-query heads
            x = x + mlp(mlp_norm(x))        SwiGLU: down(silu(gate(x)) * up(x))

The conventions are those of transformers' `LlamaForCausalLM` (no biases, RMSNorm computed
in fp32 and cast back before the gain, rotary embeddings in the "rotate half" layout with
separate q/k/v projections), so exporting to Hugging Face is a pure renaming of weights
(see `mlscale.export.hf`). The model is single-device on purpose: data/tensor parallelism,
activation checkpointing and torch.compile are applied from outside (`train/parallel.py`).

When the projections are plain nn.Linear layers, q/k/v (and gate/up) run as one matrix
multiply over their concatenated weights; LoRA, quantised or hooked layers (tensor
parallelism) are called one by one instead. The parameters stay separate either way.
In fp32 eager training on CPU those fused pieces (and RMSNorm, and short-context causal
attention) run through hand-written backward passes and fused C++ kernels
(`model/cpu_fused.py`); everywhere else autograd of the code below.

Three attention paths share one `scaled_dot_product_attention` call:
- training / scoring: `is_causal=True`, no mask tensor (the fused kernels' fast path);
- packed examples (`segment_ids`): an explicit block-diagonal causal mask, and rotary
  positions that restart at every segment, so examples do not see each other;
- generation with a `KVCache`: keys/values are written into a preallocated cache and the
  new queries attend to everything cached so far.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlscale.model import cpu_fused
from mlscale.model.config import ModelConfig


# ----------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16):
            if cpu_fused.enabled(x):
                return cpu_fused.rms_norm(x, self.weight, self.eps)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # low precision: normalise in fp32, cast back, then apply the gain (as transformers)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


# ------------------------------------------------------------------- rotary embeddings
class RotaryEmbedding(nn.Module):
    """cos/sin tables of the rotary position embedding for positions 0..max_len-1.

    The rotation pairs channel i with channel i + head_dim/2 ("rotate half", the
    transformers layout), both using frequency theta^(-2i/head_dim), so the tables repeat
    the half-width angles twice: [max_len, head_dim].
    """

    def __init__(self, head_dim: int, max_len: int, theta: float):
        super().__init__()
        self.head_dim, self.max_len, self.theta = head_dim, max_len, theta
        cos, sin = self._tables(None)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, device: torch.device | None) -> tuple[Tensor, Tensor]:
        # the same float32 arithmetic as transformers' LlamaRotaryEmbedding, for parity
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32,
                                                      device=device) / self.head_dim))
        pos = torch.arange(self.max_len, dtype=torch.float32, device=device)
        angles = pos[:, None] * inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # Rebuild the tables after every move: a cast to bf16 and back would otherwise
        # leave them rounded, and `to_empty()` (meta-device init) would leave garbage.
        super()._apply(fn, recurse)
        if self.cos.device.type != "meta":
            self.cos, self.sin = self._tables(self.cos.device)
        return self

    def forward(self, start: int, length: int, position_ids: Tensor | None) -> tuple[Tensor, Tensor]:
        """Tables for the given positions: [T, head_dim], or [B, T, head_dim]."""
        if position_ids is None:
            return self.cos[start:start + length], self.sin[start:start + length]
        return self.cos[position_ids], self.sin[position_ids]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, T, heads, head_dim] by the position angles (cos/sin: [(B,) T, head_dim])."""
    cos = cos.to(x.dtype).unsqueeze(-2)  # broadcast over heads
    sin = sin.to(x.dtype).unsqueeze(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin  # rotate_half(x) = [-x2, x1]


def positions_in_segments(segment_ids: Tensor) -> Tensor:
    """Position of each token within its segment: [[0,0,0,1,1]] -> [[0,1,2,0,1]].

    Segments are runs of equal ids along the sequence (packed examples).
    """
    B, T = segment_ids.shape
    idx = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    # index of the most recent segment start at or before each position
    last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - last_start


# -------------------------------------------------------------------------- KV cache
@dataclass
class KVCache:
    """Preallocated keys and values of every layer for incremental decoding.

    `k` and `v` are [n_layer, B, kv_heads, max_len, head_dim]; `pos` is the number of
    positions filled. The model advances `pos` after each forward pass.
    """

    k: Tensor
    v: Tensor
    pos: int = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k/v [B, kv_heads, T, head_dim] at `pos`; return all keys/values so far."""
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self) -> None:
        self.pos = 0


# ------------------------------------------------------------------------- attention
def _plain(*linears: nn.Linear) -> bool:
    """True when the projections are untouched nn.Linear layers, so their weights may be
    concatenated into one matrix multiply. LoRA or quantised replacements, and modules
    with hooks (tensor parallelism redistributes through hooks), take the module path."""
    return all(type(m) is nn.Linear and type(m.weight) is nn.Parameter and m.bias is None
               and not m._forward_hooks and not m._forward_pre_hooks for m in linears)


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads (kv_heads <= n_head)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.kv_heads, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, causal: bool,
                kv_cache: KVCache | None = None) -> Tensor:
        B, T, _ = x.shape
        H, KV, D = self.n_head, self.kv_heads, self.head_dim
        plain = _plain(self.q_proj, self.k_proj, self.v_proj)
        fused = plain and kv_cache is None and cpu_fused.enabled(x)
        if fused:  # hand-written backward
            q, k, v = cpu_fused.qkv_rope(x, self.q_proj.weight, self.k_proj.weight,
                                         self.v_proj.weight, cos, sin, H, KV)
        else:
            if plain:
                # one matmul for q, k and v instead of three (forward and backward) and one
                # rotation for q and k together: fewer, larger kernels. The weights' concat
                # is a small copy next to the activations; its backward splits the grads.
                w = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
                qkv = F.linear(x, w).view(B, T, H + 2 * KV, D)
                qk = apply_rotary(qkv[:, :, :H + KV], cos, sin)
                q, k, v = qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + KV:]
            else:
                q = apply_rotary(self.q_proj(x).view(B, T, H, D), cos, sin)
                k = apply_rotary(self.k_proj(x).view(B, T, KV, D), cos, sin)
                v = self.v_proj(x).view(B, T, KV, D)
            # [B, heads, T, head_dim] views: SDPA takes strided inputs, no copies needed
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if (fused and mask is None and causal and (self.dropout == 0 or not self.training)
                and cpu_fused.causal_attention_fits(T, D)):
            # its output is a [B, H, T, D] view of [B, T, H, D] memory: the reshape below is free
            y = cpu_fused.causal_attention(q, k, v)
        else:
            if kv_cache is not None:
                k, v = kv_cache.update(self.layer, k, v)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal,
                dropout_p=self.dropout if self.training else 0.0,
                # grouped-query heads are broadcast inside the kernel instead of copied
                enable_gqa=KV != H,
            )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


# ------------------------------------------------------------------------------- MLP
class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if _plain(self.gate_proj, self.up_proj, self.down_proj) and cpu_fused.enabled(x):
            return cpu_fused.swiglu(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
        if _plain(self.gate_proj, self.up_proj):  # one matmul for both (see Attention)
            gate, up = F.linear(x, torch.cat((self.gate_proj.weight, self.up_proj.weight))).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


# ----------------------------------------------------------------------------- block
class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, causal: bool,
                kv_cache: KVCache | None = None) -> Tensor:
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), cos, sin, mask, causal, kv_cache))
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))


# ----------------------------------------------------------------------------- model
class Llama(nn.Module):
    """The decoder: embeddings, `n_layer` blocks, final norm, output projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (> 0) before building the model")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2 n_layer).

        The scaling (GPT-2) keeps the residual stream's variance independent of depth,
        since every block adds two branches to it. Norm gains start at one.
        """
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            for proj in (block.attn.o_proj, block.mlp.down_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layer))

    # -- forward ---------------------------------------------------------------------
    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits [B, T, vocab] for token ids `idx` [B, T], and the loss if `targets` is given.

        loss: mean cross entropy over the targets that are not -100.
        kv_cache: continue from the cached positions (generation); advances `kv_cache.pos`.
        position_ids: rotary positions [T] or [B, T]; default 0..T-1 (after the cache), or
            restarting at every segment when `segment_ids` is given.
        segment_ids: [B, T] ids of packed examples; a token attends only to earlier tokens
            of its own segment.
        """
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.cfg.seq_len:
            raise ValueError(f"sequence of {start + T} positions exceeds model.seq_len={self.cfg.seq_len}")
        mask, causal = None, True
        if segment_ids is not None:
            if kv_cache is not None:
                raise ValueError("segment_ids cannot be combined with a KV cache")
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            mask = (same & torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()).unsqueeze(1)
            causal = False
            if position_ids is None:
                position_ids = positions_in_segments(segment_ids)
        elif kv_cache is not None and start > 0:
            causal = False
            if T > 1:  # new queries at start..start+T-1 see every key up to their own position
                q_pos = torch.arange(start, start + T, device=idx.device)
                mask = torch.arange(start + T, device=idx.device)[None, :] <= q_pos[:, None]
        cos, sin = self.rotary(start, T, position_ids)

        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin, mask, causal, kv_cache)
        logits = self.lm_head(self.norm(x))
        if kv_cache is not None:
            kv_cache.pos = start + T

        loss = None
        if targets is not None:
            # fp32 softmax even when the model runs in bf16
            loss = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(B * T),
                                   ignore_index=-100)
        return logits, loss

    # -- generation ------------------------------------------------------------------
    def new_kv_cache(self, batch_size: int, max_len: int | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for `batch_size` sequences of up to `max_len` (<= seq_len) positions."""
        max_len = self.cfg.seq_len if max_len is None else max_len
        if not 0 < max_len <= self.cfg.seq_len:
            raise ValueError(f"KV cache length {max_len} must be in 1..model.seq_len={self.cfg.seq_len}")
        ref = self.embed.weight
        shape = (self.cfg.n_layer, batch_size, self.cfg.kv_heads, max_len, self.cfg.head_dim)
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        return KVCache(torch.zeros(shape, device=device, dtype=dtype),
                       torch.zeros(shape, device=device, dtype=dtype))

    # -- accounting ------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (a tied embedding counted once).

        non_embedding: leave out the token embedding and, when untied, the output
        projection (Kaplan et al.'s N).
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if non_embedding:
            n -= self.embed.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 N + 12 L d T.

        N counts the weights of every matrix multiply (all projections and the output
        head; not the embedding lookup or the norm gains): 2 FLOPs per weight forward, 4
        backward. Attention scores and their weighted sum add 2 x 2 T d per layer forward,
        twice that backward (no discount for the causal mask, as in PaLM's MFU).
        """
        T = self.cfg.seq_len if seq_len is None else seq_len
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        attn = self.cfg.n_head * self.cfg.head_dim
        return float(6 * n_matmul + 12 * self.cfg.n_layer * attn * T)
