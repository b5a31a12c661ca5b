"""MAE (He et al. 2021): hide 75% of the patches, reconstruct their pixels.

Each image is cropped and flipped (MAE's only augmentation: random resized crop from 20%
of the area), cut into patches, and a random 75% of them (per image, by argsort of
noise) is dropped before the encoder, which sees the visible quarter only. A light
decoder fills in mask tokens and predicts every patch's pixels; the loss is the mean
squared error on the masked patches, against pixels normalised per patch (`mae.
norm_pix_loss`, the paper's default). The encoder, a plain ViT with a patch stem, is what
the run keeps. The report shows reconstructions of validation images.

    mlscale train --task mae --data IMAGES --out RUN
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlscale.config import option
from mlscale.errors import ConfigError
from mlscale.model.registry import family_of
from mlscale.runtime.device import autocast
from mlscale.tasks.selfsup import views
from mlscale.tasks.selfsup.base import SelfSupervised, SelfSupervisedConfig, backbone_config, spread
from mlscale.tasks.selfsup.losses import mae_loss, random_masking
from mlscale.train.task import register_task


@dataclass
class MAEOptions:
    mask_ratio: float = option(0.75, "share of patches hidden from the encoder", min=0.0, max=0.99)
    norm_pix_loss: bool = option(True, "targets: each patch's pixels normalised by their own mean and std")
    decoder_dim: int = option(512, "decoder width", min=8)
    decoder_depth: int = option(8, "decoder blocks", min=1)
    decoder_heads: int = option(16, "decoder attention heads", min=1)
    decoder_mlp_ratio: float = option(4.0, "decoder MLP width as a multiple of decoder_dim", min=0.25)


def _mae_views() -> views.ViewSpec:
    return views.ViewSpec(min_scale=0.2, jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0)


@dataclass
class MAEConfig(SelfSupervisedConfig):
    """Everything `mlscale train --task mae` is configured by (model: a ViT with model.stem =
    patch); saved as RUN/config.json."""

    views: views.ViewSpec = option(default_factory=_mae_views, help="the augmentation (crop and flip)")
    mae: MAEOptions = option(default_factory=MAEOptions, help="masking, decoder and loss")


@register_task
class MAE(SelfSupervised):
    """Masked-patch reconstruction with a ViT encoder on the visible patches only."""

    name = "mae"
    config_cls = MAEConfig

    @classmethod
    def build_network(cls, cfg: MAEConfig) -> nn.Module:
        from mlscale.tasks.selfsup.mae_model import MAEDecoder, MaskedAutoencoder

        if cfg.model.family != "vit" or cfg.model.stem != "patch":
            raise ConfigError("mae masks patches before the encoder: it needs model.family=vit with "
                              "model.stem=patch (convolutions across patches would see the masked ones)")
        m = cfg.mae
        backbone = family_of(cfg.model).build(backbone_config(cfg.model))
        decoder = MAEDecoder(cfg.model, m.decoder_dim, m.decoder_depth, m.decoder_heads, m.decoder_mlp_ratio)
        return MaskedAutoencoder(backbone, decoder)

    def flops_per_unit(self, model: nn.Module) -> float:
        """The encoder on the visible share of the patches, the decoder on all of them
        (both ~ 6 x weights x tokens; attention's quadratic part is small here)."""
        cfg = self.cfg.model
        tokens = cfg.grid ** 2
        visible = int(tokens * (1 - self.cfg.mae.mask_ratio)) + cfg.prefix_tokens
        enc = sum(p.numel() for p in model.backbone.blocks.parameters())
        dec = sum(p.numel() for p in model.decoder.parameters())
        patch = sum(p.numel() for p in model.backbone.patch_embed.parameters())
        return float(6 * (enc * visible + dec * (tokens + cfg.prefix_tokens) + patch * tokens))

    def batch(self, index: int) -> dict[str, Any]:
        """One crop of each image and its masking noise; draws for the global batch."""
        rows, mine, rng = self.rows(index)
        H, W, _ = self.images.shape
        params = views.draw(self.cfg.views, len(rows), H, W, rng).take(mine)
        noise = rng.random((len(rows), self.cfg.model.grid ** 2))[mine]
        x = views.render(self.pixels(rows[mine]), params, self.cfg.views, self.mean, self.std, self.runtime.device)
        return {"x": x, "noise": torch.as_tensor(noise, dtype=torch.float32, device=x.device)}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        keep, mask, restore = random_masking(batch["noise"], self.cfg.mae.mask_ratio)
        with autocast(self.runtime.device, self.runtime.dtype):
            latent, pred = model(batch["x"], keep, restore)
        loss = mae_loss(batch["x"], pred.float(), mask, self.cfg.model.patch_size, self.cfg.mae.norm_pix_loss)
        pooled = latent[:, 0] if self.cfg.model.pool == "cls" else latent[:, self.cfg.model.prefix_tokens:].mean(1)
        return loss, self.keep_stats(spread=spread(pooled))


@torch.no_grad()
def reconstruct(network: nn.Module, images: np.ndarray, cfg: MAEConfig, mean: list[float], std: list[float],
                seed: int = 0) -> dict[str, Tensor]:
    """Input, masked input and reconstruction [n, C, H, W] in [0, 1] pixels of uint8 images
    [n, H, W, C] under a seeded masking: the report's figure. The visible patches are
    shown as they were; the masked ones as predicted (with each patch's own mean and
    spread put back when the targets were normalised per patch)."""
    from mlscale.tasks import augment
    from mlscale.tasks.selfsup.losses import patchify, unpatchify

    x = augment.to_float(images, mean, std, next(network.parameters()).device)
    noise = torch.as_tensor(np.random.default_rng(seed).random((len(x), cfg.model.grid ** 2)),
                            dtype=torch.float32, device=x.device)
    keep, mask, restore = random_masking(noise, cfg.mae.mask_ratio)
    _, pred = network(x, keep, restore)
    target = patchify(x, cfg.model.patch_size)
    if cfg.mae.norm_pix_loss:
        pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
    m = mask.unsqueeze(-1)
    m_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)

    def pixels(patches: Tensor) -> Tensor:
        return (unpatchify(patches, cfg.model.patch_size, x.shape[1], x.shape[2], x.shape[3]) * s_t + m_t).clamp(0, 1)

    return {"input": pixels(target), "masked": pixels(target * (1 - m)),
            "reconstruction": pixels(target * (1 - m) + pred * m)}
