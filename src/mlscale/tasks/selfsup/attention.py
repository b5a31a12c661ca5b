"""Where a ViT's class token looks: DINO's attention-map figure (Caron et al. 2021, fig. 1).

The last block's attention of the class token over the patches, per head, read from
outside the model: the tokens entering the last block are computed as the model does,
then that block's own norm and query/key projections give the attention weights.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def class_token_attention(vit: nn.Module, images: Tensor) -> Tensor:
    """[B, heads, grid_h, grid_w]: softmax attention of the class token to each patch in
    the last block (registers take part in the softmax but are not shown), each map
    summing to at most 1."""
    cfg = vit.cfg
    if cfg.pool != "cls":
        raise ValueError("attention maps need a class token (model.pool=cls)")
    x = vit.embed(images)
    for block in vit.blocks[:-1]:
        x = block(x)
    last = vit.blocks[-1]
    h = last.norm1(x)
    attn = last.attn
    B, T, _ = h.shape
    H, D = attn.n_head, attn.head_dim
    q = attn.q_norm(attn.q_proj(h[:, :1]).view(B, 1, H, D)).transpose(1, 2)  # [B, H, 1, D]
    k = attn.k_norm(attn.k_proj(h).view(B, T, H, D)).transpose(1, 2)          # [B, H, T, D]
    weights = (q @ k.transpose(-1, -2) / D ** 0.5).softmax(-1)[:, :, 0]       # [B, H, T]
    grid_h, grid_w = images.shape[2] // cfg.patch_size, images.shape[3] // cfg.patch_size
    return weights[:, :, cfg.prefix_tokens:].reshape(B, H, grid_h, grid_w)
