"""Shape of the LLaMA-style decoder, and the depth preset used by scaling sweeps."""
from __future__ import annotations

from dataclasses import dataclass

from mlscale.config import option
from mlscale.errors import ConfigError


@dataclass
class LlamaConfig:
    family: str = option("llama", "model family (see mlscale.model.registry)")
    n_layer: int = option(4, "transformer blocks", min=1)
    n_head: int = option(4, "query heads per attention layer", min=1)
    n_kv_head: int = option(0, "key/value heads (grouped-query attention); 0 = same as n_head", min=0)
    d_model: int = option(128, "residual stream width", min=8)
    seq_len: int = option(64, "context length in tokens", min=2)
    vocab_size: int = option(0, "vocabulary size; 0 = take it from the tokenizer", min=0)
    ffn_mult: float = option(8 / 3, "SwiGLU hidden width as a multiple of d_model (LLaMA: 8/3)", min=0.5)
    ffn_multiple_of: int = option(32, "round the SwiGLU hidden width up to a multiple of this", min=1)
    tie_embeddings: bool = option(True, "share the input embedding and output projection")
    rope_theta: float = option(10000.0, "rotary embedding base", min=1.0)
    norm_eps: float = option(1e-5, "RMSNorm epsilon", min=0.0)
    init_std: float = option(0.02, "std of the normal init; output projections are scaled by 1/sqrt(2*n_layer)", min=0.0)
    dropout: float = option(0.0, "dropout on attention and residual branches", min=0.0, max=1.0)
    depth: int = option(0, "size preset for sweeps: if > 0, n_layer=depth, d_model=64*depth, n_head=depth (heads of width 64)", min=0)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_hidden(self) -> int:
        h = int(self.ffn_mult * self.d_model)
        return self.ffn_multiple_of * ((h + self.ffn_multiple_of - 1) // self.ffn_multiple_of)

    def validate(self) -> None:
        if self.depth:
            self.apply_depth()
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model={self.d_model} must be divisible by model.n_head={self.n_head}")
        if self.head_dim % 2:
            raise ConfigError(f"model.d_model / model.n_head = {self.head_dim} must be even for rotary embeddings")
        if self.n_head % self.kv_heads:
            raise ConfigError(f"model.n_head={self.n_head} must be a multiple of model.n_kv_head={self.kv_heads}")

    def apply_depth(self) -> None:
        """The one-knob size preset (as nanochat): width 64 per layer, heads of width 64."""
        d = self.depth
        self.n_layer = d
        self.d_model = 64 * d
        self.n_head = max(1, d)
        self.n_kv_head = 0
