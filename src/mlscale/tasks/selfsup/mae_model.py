"""MAE's network (He et al. 2021): a ViT encoder on the visible patches, a light decoder.

    images -> patch embedding + positions -> keep 25% (random per image) -> [cls] visible
        -> encoder blocks -> norm -> decoder_embed -> + mask tokens, unshuffled
        -> + fixed sin-cos positions -> decoder blocks -> norm -> pixels of every patch

The encoder is the backbone itself (`backbone.embed(images, keep)`, its blocks and
norm), so the run keeps an ordinary ViT. The decoder is built from the same block as
the ViT (model/vit/model.py) at its own width and depth; it exists only for pretraining.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from mlscale.model.layers import LayerNorm, sincos_pos_embed_2d
from mlscale.model.vit.config import ViTConfig
from mlscale.model.vit.model import Block


class MAEDecoder(nn.Module):
    """Mask tokens in, pixels out: blocks of width `dim` over all patches."""

    def __init__(self, encoder: ViTConfig, dim: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        cfg = dataclasses.replace(encoder, d_model=dim, n_layer=depth, n_head=heads, mlp_ratio=mlp_ratio,
                                  dropout=0.0, drop_path=0.0, layer_scale=0.0, qk_norm=False, registers=0)
        self.prefix = encoder.prefix_tokens
        self.embed = nn.Linear(encoder.d_model, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.norm = LayerNorm(dim, eps=encoder.norm_eps)
        self.pred = nn.Linear(dim, encoder.patch_size ** 2 * encoder.in_channels)
        self.register_buffer("pos", sincos_pos_embed_2d(dim, encoder.grid).unsqueeze(0), persistent=False)
        for m in self.modules():  # MAE's init: xavier uniform linears, zero biases, std 0.02 mask token
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, restore: Tensor) -> Tensor:
        """latent [B, prefix + K, D_enc] (the encoder's output) and the unshuffling
        indices [B, L] -> predicted pixels [B, L, p*p*C] of every patch."""
        x = self.embed(latent)
        prefix, visible = x[:, :self.prefix], x[:, self.prefix:]
        B, L = restore.shape
        masked = self.mask_token.expand(B, L - visible.shape[1], -1)
        patches = torch.cat([visible, masked], dim=1)
        patches = torch.gather(patches, 1, restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([prefix, patches + self.pos.to(x.dtype)], dim=1)  # the prefix has position 0
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, self.prefix:]


class MaskedAutoencoder(nn.Module):
    """The backbone as encoder of the visible patches, and the decoder."""

    def __init__(self, backbone: nn.Module, decoder: MAEDecoder):
        super().__init__()
        self.backbone, self.decoder = backbone, decoder

    def encode(self, images: Tensor, keep: Tensor) -> Tensor:
        """The backbone's normalised tokens [B, prefix + K, D] for the visible patches."""
        x = self.backbone.embed(images, keep)
        for block in self.backbone.blocks:
            x = block(x)
        return self.backbone.norm(x)

    def forward(self, images: Tensor, keep: Tensor, restore: Tensor) -> tuple[Tensor, Tensor]:
        """(encoder tokens, predicted pixels of every patch [B, L, p*p*C])."""
        latent = self.encode(images, keep)
        return latent, self.decoder(latent, restore)
