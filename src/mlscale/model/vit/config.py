"""Shape of the vision transformer (the `model` section when model.family = "vit").

Defaults are a small ViT for 28x28 grey images (Fashion-MNIST): 7x7 patches of 4 pixels,
width 192, 6 blocks of 3 heads (ViT-Ti's width, half its depth). `norm_eps` is 1e-6, as
timm, MAE and DINO use; transformers' ViT defaults to 1e-12, but the export writes our
value into config.json, so the two agree whatever it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mlscale.config import option
from mlscale.errors import ConfigError


@dataclass
class ViTConfig:
    family: str = option("vit", "model family (see mlscale.model.registry)")
    image_size: int = option(28, "side of the square training images in pixels; any multiple of "
                                 "patch_size also runs (learned positions are interpolated)", min=1)
    patch_size: int = option(4, "side of a square patch in pixels", min=1)
    in_channels: int = option(1, "image channels (1 grey, 3 RGB)", min=1)
    num_classes: int = option(10, "classes of the head; 0 = no head (forward returns features)", min=0)
    stem: Literal["patch", "conv"] = option(
        "patch", "how images become tokens: one strided convolution per patch (ViT), or early "
                 "convolutions (Xiao et al. 2021): a 3x3 stride-2 convolution per halving of the "
                 "patch side, then a 1x1 projection; the same tokens, learnt faster on small data "
                 "(no Hugging Face / timm ViT counterpart)", choices=("patch", "conv"))
    stem_width: int = option(32, "conv stem: channels of its first convolution, doubled at each halving",
                             min=1)
    stem_full_res: int = option(0, "conv stem: 3x3 convolutions at the full image resolution (stride 1, "
                                   "stem_width channels) before the first halving", min=0)
    stem_norm: Literal["batch", "group"] = option(
        "batch", "conv stem: the norm after each convolution: batch (the paper's BatchNorm; one batch "
                 "across data-parallel ranks) or group (each image on its own, for tiny batches)",
        choices=("batch", "group"))
    d_model: int = option(192, "residual stream width", min=8)
    n_layer: int = option(6, "transformer blocks", min=1)
    n_head: int = option(3, "attention heads", min=1)
    mlp_ratio: float = option(4.0, "MLP hidden width as a multiple of d_model", min=0.25)
    pool: Literal["cls", "mean"] = option(
        "cls", "image embedding: the class token's output, or the mean of the patch tokens "
               "(no class token; the final norm then comes after the mean, as timm's fc_norm)",
        choices=("cls", "mean"))
    pos_embed: Literal["learned", "sincos"] = option(
        "learned", "patch positions: learned (interpolated bicubically for another grid), or "
                   "fixed 2-D sin-cos computed for the grid (MAE)", choices=("learned", "sincos"))
    registers: int = option(0, "register tokens (Darcet et al. 2023): extra learned tokens, "
                               "without positions, dropped before pooling", min=0)
    qk_norm: bool = option(False, "LayerNorm on queries and keys of each head (ViT-22B)")
    layer_scale: float = option(0.0, "initial value of per-channel residual branch gains "
                                     "(CaiT, DINOv2); 0 = none", min=0.0)
    dropout: float = option(0.0, "dropout on attention weights and residual branches", min=0.0, max=1.0)
    drop_path: float = option(0.0, "stochastic depth: rate of dropping a residual branch per image in "
                                   "the last block, rising linearly from 0 in the first (DeiT)",
                              min=0.0, max=1.0)
    norm_eps: float = option(1e-6, "LayerNorm epsilon", min=0.0)
    init_std: float = option(0.02, "std of the truncated normal init of weights and positions", min=0.0)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return int(self.d_model * self.mlp_ratio)

    @property
    def grid(self) -> int:
        """Patches along one side of a training image."""
        return self.image_size // self.patch_size

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches: the class token (cls pooling) and the registers."""
        return int(self.pool == "cls") + self.registers

    def validate(self) -> None:
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model={self.d_model} must be divisible by model.n_head={self.n_head}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"model.image_size={self.image_size} must be a multiple of "
                              f"model.patch_size={self.patch_size}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(f"model.stem=\"conv\" halves the image once per factor 2 of the patch: "
                              f"model.patch_size must be a power of 2 (2, 4, 8, 16...), got {self.patch_size}")
        if self.pos_embed == "sincos" and self.d_model % 4:
            raise ConfigError(f"model.pos_embed=\"sincos\" needs model.d_model divisible by 4, "
                              f"got {self.d_model}")
