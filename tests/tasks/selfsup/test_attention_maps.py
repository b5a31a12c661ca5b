"""DINO's attention-map figure reads the weights the model really uses: the class token's
attention output rebuilt from them equals the last block's own."""
from __future__ import annotations

import torch

from mlscale.model.vit import ViTConfig
from mlscale.model.vit.model import ViT
from mlscale.tasks.selfsup.attention import class_token_attention


def test_the_maps_are_the_weights_of_the_class_token_s_attention():
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, d_model=32, n_layer=2, n_head=4, num_classes=0, registers=2,
                    qk_norm=True)
    vit = ViT(cfg).eval()
    images = torch.randn(3, 1, 16, 16)
    maps = class_token_attention(vit, images)
    assert maps.shape == (3, 4, 4, 4)
    x = vit.embed(images)
    x = vit.blocks[0](x)
    last = vit.blocks[-1]
    h = last.norm1(x)
    B, T, _ = h.shape
    v = last.attn.v_proj(h).view(B, T, 4, 8).transpose(1, 2)  # [B, H, T, D]
    q = last.attn.q_norm(last.attn.q_proj(h[:, :1]).view(B, 1, 4, 8)).transpose(1, 2)
    k = last.attn.k_norm(last.attn.k_proj(h).view(B, T, 4, 8)).transpose(1, 2)
    weights = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1)[:, :, 0]  # [B, H, T], prefix included
    torch.testing.assert_close(weights[:, :, 3:].reshape(3, 4, 4, 4), maps)
    rebuilt = last.attn.o_proj((weights.unsqueeze(-1) * v).sum(2).reshape(B, 32))
    torch.testing.assert_close(rebuilt, last.attn(h, queries=1)[:, 0], atol=1e-6, rtol=1e-5)
    assert (maps.sum(dim=(2, 3)) < 1).all()  # the class token and registers take the rest
