"""A LLaMA-style decoder, readable top to bottom.

    tokens -> embed -> n_layer x Block -> norm -> lm_head -> logits

    Block:  x = x + attn(attn_norm(x))      RMSNorm, rotary embeddings, grouped-query heads
            x = x + mlp(mlp_norm(x))        SwiGLU: down(silu(gate(x)) * up(x))

The conventions are those of transformers' `LlamaForCausalLM` (no biases, RMSNorm computed
in fp32 and cast back before the gain, rotary embeddings in the "rotate half" layout with
separate q/k/v projections), so exporting to Hugging Face is a pure renaming of weights
(see `hf.py`). The shared pieces (RMSNorm, rotary, attention, SwiGLU) come from
`mlscale.model.layers`. The model is single-device on purpose: tensor parallelism
(`parallel.py`), the fused CPU kernels (`fused.py`), activation checkpointing,
torch.compile and data parallelism are applied from outside, by the trainer.

Three attention paths share one `attention` call (scaled_dot_product_attention):
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

from mlscale.model.layers import RMSNorm, RotaryEmbedding, SwiGLU, apply_rotary, attention, positions_in_segments
from mlscale.model.llama.config import LlamaConfig


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
class Attention(nn.Module):
    """Causal self-attention with grouped-query heads (kv_heads <= n_head)."""

    def __init__(self, cfg: LlamaConfig, layer: int):
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
        q = apply_rotary(self.q_proj(x).view(B, T, H, D), cos, sin)
        k = apply_rotary(self.k_proj(x).view(B, T, KV, D), cos, sin)
        v = self.v_proj(x).view(B, T, KV, D)
        # [B, heads, T, head_dim] views: SDPA takes strided inputs, no copies needed
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        y = attention(q, k, v, causal=causal, mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


# ----------------------------------------------------------------------------- block
class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.ffn_hidden)
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, causal: bool,
                kv_cache: KVCache | None = None) -> Tensor:
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), cos, sin, mask, causal, kv_cache))
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))


# ----------------------------------------------------------------------------- model
class Llama(nn.Module):
    """The decoder: embeddings, `n_layer` blocks, final norm, output projection."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("LlamaConfig.vocab_size must be set (> 0) before building the model")
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
