"""A vision transformer (Dosovitskiy et al. 2020), readable top to bottom.

    images [B, C, H, W] -> patch_embed -> + positions -> [cls] [registers] patches
        -> n_layer x Block -> pool -> norm -> head -> logits [B, num_classes]

    Block:  x = x + drop_path(ls1(attn(norm1(x))))    LayerNorm; q, k, v heads, optional qk-norm
            x = x + drop_path(ls2(mlp(norm2(x))))     GELU MLP: fc2(gelu(fc1(x)))

Choices, and why:
- Separate q/k/v projections (transformers' ViT layout): the Hugging Face export is a pure
  renaming, and tensor parallelism splits each of them column-wise by heads (a fused qkv
  matrix split by rows would hand one rank all of q and part of k). timm's fused `qkv`
  is split into three on import (`timm.py`).
- Any image whose sides are multiples of the patch runs: learned positions are resized
  bicubically to the input's grid (as transformers' `interpolate_pos_encoding`), sin-cos
  positions are computed for it. The class token's position is never resized.
- Pooling "cls" normalises the class token's output (transformers' ViT); "mean" has no
  class token and normalises the mean of the patch tokens (timm's `fc_norm`). Register
  tokens (Darcet et al. 2023) take part in attention but in no pooling, and carry no
  position (as DINOv2's).
- `stem = "conv"` replaces the patch convolution by early convolutions (layers.ConvStem):
  the same grid of tokens, and on small data sets a much quicker start.
- Init as timm: truncated normal(init_std) for linear weights and learned positions, zero
  biases, class and register tokens near zero (std 1e-6); the patch convolution as a
  linear map of the flattened patch (xavier uniform, MAE).

The model is single-device: tensor parallelism (`parallel.py`), activation checkpointing,
compile and data parallelism are applied from outside by the trainer.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mlscale.model.layers import (ConvStem, GeluMLP, LayerNorm, PatchEmbed, attention, resample_pos_embed,
                                  sincos_pos_embed_2d)
from mlscale.model.vit.config import ViTConfig


# ------------------------------------------------------------------------- attention
class Attention(nn.Module):
    """Bidirectional multi-head self-attention with biases; optional LayerNorm of each
    head's queries and keys before the dot product (ViT-22B's qk-norm)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.dropout = cfg.dropout
        d = cfg.d_model
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        # one norm per projection, shared by the heads: it survives a split of the heads
        self.q_norm = LayerNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = LayerNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x: Tensor, queries: int | None = None) -> Tensor:
        """Every token attends to every token; with `queries`, only the first `queries`
        tokens ask (and only their outputs are returned), all still answer."""
        B, T, _ = x.shape
        H, D = self.n_head, self.head_dim
        n = T if queries is None else queries
        q = self.q_norm(self.q_proj(x[:, :n]).view(B, n, H, D)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, H, D)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, D).transpose(1, 2)
        y = attention(q, k, v, causal=False, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, n, H * D))


# ----------------------------------------------------------------------------- block
class LayerScale(nn.Module):
    """A learned per-channel gain on a residual branch (CaiT; timm's `ls1.gamma`)."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero the branch x [B, ...] of a random `rate` of the images and
    scale the rest by 1 / (1 - rate), so its expectation is unchanged."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block; `path_rate` is this block's stochastic depth."""

    def __init__(self, cfg: ViTConfig, path_rate: float = 0.0):
        super().__init__()
        d = cfg.d_model
        self.norm1 = LayerNorm(d, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(d, cfg.layer_scale) if cfg.layer_scale > 0 else nn.Identity()
        self.norm2 = LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = GeluMLP(d, cfg.mlp_hidden)
        self.ls2 = LayerScale(d, cfg.layer_scale) if cfg.layer_scale > 0 else nn.Identity()
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.path_rate = path_rate

    def forward(self, x: Tensor, queries: int | None = None) -> Tensor:
        """x [B, T, D] -> [B, T, D]; with `queries`, the outputs of the first `queries`
        tokens only (the others still serve as keys and values)."""
        h = self.ls1(self.resid_dropout(self.attn(self.norm1(x), queries)))
        x = (x if queries is None else x[:, :queries]) + drop_path(h, self.path_rate, self.training)
        return x + drop_path(self.ls2(self.resid_dropout(self.mlp(self.norm2(x)))), self.path_rate, self.training)


# ----------------------------------------------------------------------------- model
class ViT(nn.Module):
    """Patch embedding, class and register tokens, `n_layer` blocks, pooling, norm, head."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.d_model
        if cfg.stem == "conv":
            self.patch_embed: nn.Module = ConvStem(cfg.patch_size, cfg.in_channels, d, cfg.stem_width,
                                                       cfg.stem_full_res, cfg.stem_norm)
        else:
            self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_channels, d, dynamic_size=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "cls" else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.registers, d)) if cfg.registers else None
        n_pos = int(cfg.pool == "cls") + cfg.grid ** 2  # the class token's position, then the patches'
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, d)) if cfg.pos_embed == "learned" else None
        self._sincos_cache: dict[tuple, Tensor] = {}
        self.pos_drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        rates = [cfg.drop_path * i / max(cfg.n_layer - 1, 1) for i in range(cfg.n_layer)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = LayerNorm(d, eps=cfg.norm_eps)
        self.head = nn.Linear(d, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's init (see the module docstring); layer-scale gains keep their init value."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.patch_embed.proj  # a conv stem's other convolutions keep torch's (He) init
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=std, a=-2 * std, b=2 * std)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)

    # -- forward ---------------------------------------------------------------------
    def _sincos_table(self, grid: tuple[int, int], like: Tensor) -> Tensor:
        # building a table costs about a millisecond: keep one per grid, device and dtype
        # (a plain dict, not a buffer: a cast to bf16 and back would leave a buffer rounded)
        key = (tuple(grid), like.device, like.dtype)
        table = self._sincos_cache.get(key)
        if table is None:
            table = sincos_pos_embed_2d(self.cfg.d_model, grid).unsqueeze(0).to(device=like.device, dtype=like.dtype)
            if not torch.compiler.is_compiling():  # a traced graph keeps its own constant
                self._sincos_cache[key] = table
        return table

    def patch_positions(self, grid: tuple[int, int], like: Tensor) -> Tensor:
        """Positions [1, grid_h * grid_w, D] of the patches of an input with this grid."""
        if self.pos_embed is None:
            return self._sincos_table(grid, like)
        pos = self.pos_embed[:, int(self.cls_token is not None):]
        return resample_pos_embed(pos, (self.cfg.grid, self.cfg.grid), grid)

    def tokens(self, images: Tensor) -> Tensor:
        """Every token after the last block, [B, prefix + N, D] in the order [cls]
        [registers] patches (row-major), before the final norm."""
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return x

    def embed(self, images: Tensor, keep: Tensor | None = None) -> Tensor:
        """The tokens before the first block: patches with positions, after the class
        token and registers. With `keep` [B, K] (patch indices), only those patches go
        in: MAE's encoder sees the visible patches alone."""
        B, _, H, W = images.shape
        p = self.cfg.patch_size
        x = self.patch_embed(images)
        x = x + self.patch_positions((H // p, W // p), x)
        if keep is not None:
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        prefix = []
        if self.cls_token is not None:
            cls = self.cls_token if self.pos_embed is None else self.cls_token + self.pos_embed[:, :1]
            prefix.append(cls.expand(B, -1, -1))  # sin-cos: the class token's position is zero (MAE)
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(B, -1, -1))
        return self.pos_drop(torch.cat([*prefix, x], dim=1))

    def features(self, images: Tensor) -> Tensor:
        """The pooled, normalised image embedding [B, d_model] (the head's input; for k-NN
        and linear probes)."""
        if self.cfg.pool == "mean":
            return self.norm(self.tokens(images)[:, self.cfg.prefix_tokens:].mean(dim=1))
        # only the class token's output is pooled: in the last block it alone needs a
        # query, an attention output and an MLP (the same logits, ~1/L fewer FLOPs)
        x = self.embed(images)
        for block in self.blocks[:-1]:
            x = block(x)
        return self.norm(self.blocks[-1](x, queries=1)[:, 0])

    def forward(self, images: Tensor) -> Tensor:
        """Logits [B, num_classes] for float images [B, C, H, W] (H, W multiples of the
        patch); with num_classes = 0 the features."""
        return self.head(self.features(images))

    # -- accounting ------------------------------------------------------------------
    def num_params(self) -> int:
        """Every parameter, positions and tokens included."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_image(self, image_size: int | None = None) -> float:
        """Training FLOPs per image (forward + backward) at a square `image_size`:

            sum over blocks of 6 x (W_kv x T + W_rest x Q) + 12 x d x Q x T
            + 6 x W_head + sum over stem convolutions of 6 x W_conv x P_conv

        with N patches and T = N + class and register tokens. Q is the number of tokens
        that query: T, except in the last block with class-token pooling, where only the
        class token does (Q = 1). W_kv are the key and value projections' weights (used by
        every token), W_rest the block's other linear weights (used by the queries), W_head
        the head's (once per image), and W_conv a convolution of the stem's, used at P_conv
        output positions (N for the patch convolution): 2 FLOPs per weight and use forward,
        4 backward, except that no gradient is computed for the images, so the first
        convolution costs 2 backward. Attention scores and their weighted sum add
        2 x 2 x Q x T x d per block forward, twice that backward. Norms, softmax, GELU,
        biases and positions are left out.
        """
        size = self.cfg.image_size if image_size is None else image_size
        T = (size // self.cfg.patch_size) ** 2 + self.cfg.prefix_tokens
        queries = [T] * (self.cfg.n_layer - 1) + [1 if self.cfg.pool == "cls" else T]
        blocks = sum(self._block_flops(b, T, Q) for b, Q in zip(self.blocks, queries))
        w_head = _linear_weights(self.head)
        return float(blocks + 6 * w_head + self._stem_flops(size))

    def _block_flops(self, block: nn.Module, T: int, Q: int) -> float:
        w_kv = _linear_weights(block.attn.k_proj) + _linear_weights(block.attn.v_proj)
        w_rest = _linear_weights(block) - w_kv
        return 6 * (w_kv * T + w_rest * Q) + 12 * self.cfg.d_model * Q * T

    def _stem_flops(self, size: int) -> float:
        flops, side, first = 0.0, size, True
        for conv in (m for m in self.patch_embed.modules() if isinstance(m, nn.Conv2d)):
            side = (side + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
            flops += (4 if first else 6) * conv.weight.numel() * side * side
            first = False
        return flops


def _linear_weights(module: nn.Module) -> int:
    """Weights of the linear layers in `module` (itself included)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
