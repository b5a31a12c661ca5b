"""How a Llama block splits for tensor parallelism (Megatron-LM).

q/k/v and gate/up are column-parallel (each rank computes its heads / hidden slice), o
and down are row-parallel (partial sums all-reduced), so one block costs two all-reduces
forward and two backward. Embeddings, norms and the head stay replicated. The trainer
applies `TP_PLAN` to every block with torch's `parallelize_module`, then `tp_shard`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mlscale.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

# module name inside a block -> Megatron split
TP_PLAN: dict[str, str] = {
    "attn.q_proj": "colwise", "attn.k_proj": "colwise", "attn.v_proj": "colwise",
    "attn.o_proj": "rowwise",
    "mlp.gate_proj": "colwise", "mlp.up_proj": "colwise", "mlp.down_proj": "rowwise",
}


def check_tp(block: nn.Module, tp: int) -> None:
    """Refuse a degree that does not divide the heads, the kv heads and the MLP width."""
    attn, hidden = block.attn, block.mlp.gate_proj.out_features
    if attn.n_head % tp or attn.kv_heads % tp or hidden % tp:
        raise ConfigError(f"parallel.tp={tp} must divide model.n_head={attn.n_head}, the kv heads "
                          f"({attn.kv_heads}) and the MLP width ({hidden})")


def tp_shard(block: nn.Module, tp: int) -> None:
    """Set the per-rank head counts (n_head/tp, kv_heads/tp) the attention reshapes use,
    once per block around the split; refuses a degree that does not divide the shapes."""
    check_tp(block, tp)
    block.attn.n_head //= tp
    block.attn.kv_heads //= tp
