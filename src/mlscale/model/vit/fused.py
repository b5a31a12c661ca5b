"""The fused path of the ViT, applied from outside by swapping module classes (see
`mlscale.model.swap`): the trainer calls `apply_fused(model)` after building it.

With plain nn.Linear projections, q, k and v come from one matrix multiply over their
concatenated weights and biases, as timm's single `qkv` layer computes them: one larger
kernel instead of three, forward and backward, while the parameters stay separate (so
LoRA targets, the tensor-parallel plan, Hugging Face and timm names are unchanged).
LoRA, quantised or hooked projections take the model's own code. Results equal the
pure model's within float rounding (tests check forward and gradients).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlscale.model.layers import attention
from mlscale.model.swap import plain_linears, swap_classes
from mlscale.model.vit.model import Attention


class FusedAttention(Attention):
    """Attention with one q/k/v matmul over the concatenated projections."""

    def forward(self, x: Tensor, queries: int | None = None) -> Tensor:
        # fewer queries than tokens (the last block under class-token pooling): q is not
        # computed for every token, so the model's own code
        if queries is not None or not plain_linears(self.q_proj, self.k_proj, self.v_proj):
            return super().forward(x, queries)
        B, T, _ = x.shape
        H, D = self.n_head, self.head_dim
        # the weights' concat is a small copy next to the activations; its backward splits the grads
        w = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        b = torch.cat((self.q_proj.bias, self.k_proj.bias, self.v_proj.bias))
        q, k, v = F.linear(x, w, b).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        y = attention(self.q_norm(q), self.k_norm(k), v, causal=False,
                      dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


_SWAPS: dict[type, type] = {Attention: FusedAttention}


def apply_fused(model: nn.Module) -> int:
    """Swap the ViT's attention modules for the fused subclass in place; returns how many."""
    return swap_classes(model, _SWAPS)
