"""How a ViT block splits for tensor parallelism (Megatron-LM).

q/k/v and fc1 are column-parallel (each rank computes its heads / its slice of the MLP),
o_proj and fc2 are row-parallel (partial sums all-reduced, the bias added once), so one
block costs two all-reduces forward and two backward. The per-head qk-norm works on each
head's own width and is shared by the heads, so it stays replicated, as do the patch
embedding, the tokens, the positions, the block norms and the head. The trainer applies
`TP_PLAN` to every block with torch's `parallelize_module`, then `tp_shard`.
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
    "mlp.fc1": "colwise", "mlp.fc2": "rowwise",
}


def check_tp(block: nn.Module, tp: int) -> None:
    """Refuse a degree that does not divide the heads and the MLP width."""
    heads, hidden = block.attn.n_head, block.mlp.fc1.out_features
    if heads % tp or hidden % tp:
        raise ConfigError(f"parallel.tp={tp} must divide model.n_head={heads} and the MLP width ({hidden})")


def tp_shard(block: nn.Module, tp: int) -> None:
    """Set the per-rank head count (n_head/tp) the attention reshapes use, once per block
    around the split; refuses a degree that does not divide the shapes."""
    check_tp(block, tp)
    block.attn.n_head //= tp
