"""SimCLR (Chen et al. 2020): two augmented views of each image must find each other.

Every image of the micro-batch gets two views (random resized crop from 8% of the area,
jitter, grey, blur, flips: views.py); backbone -> projection head -> NT-Xent with a
temperature, whose negatives are all other views of the global batch (under data
parallelism the projections of every rank are gathered with their gradients). The
backbone's features, not the projections, are what the run keeps.

    mlscale train --task simclr --data IMAGES --out RUN
    mlscale train --preset simclr-fashion-mnist --data fm --out RUN
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mlscale.config import option
from mlscale.model.registry import family_of
from mlscale.runtime.device import autocast
from mlscale.tasks.selfsup import views
from mlscale.tasks.selfsup.base import SelfSupervised, SelfSupervisedConfig, backbone_config, feature_dim, spread
from mlscale.tasks.selfsup.heads import Pretraining, ProjectionHead
from mlscale.tasks.selfsup.losses import nt_xent
from mlscale.train.task import register_task


@dataclass
class SimCLROptions:
    temperature: float = option(0.5, "NT-Xent temperature (lightly's default; the paper uses 0.1 "
                                "with batches of thousands)", min=1e-4)
    hidden: int = option(0, "projection head's hidden width; 0 = the backbone's feature width", min=0)
    out_dim: int = option(128, "projection width (where the loss is computed)", min=1)


@dataclass
class SimCLRConfig(SelfSupervisedConfig):
    """Everything `mlscale train --task simclr` is configured by; saved as RUN/config.json."""

    simclr: SimCLROptions = option(default_factory=SimCLROptions, help="head and loss")


@register_task
class SimCLR(SelfSupervised):
    """NT-Xent between the projections of two views of each image."""

    name = "simclr"
    config_cls = SimCLRConfig
    views_per_image = 2

    @classmethod
    def build_network(cls, cfg: SimCLRConfig) -> nn.Module:
        backbone = family_of(cfg.model).build(backbone_config(cfg.model))
        width = feature_dim(cfg.model)
        head = ProjectionHead(width, cfg.simclr.hidden or width, cfg.simclr.out_dim)
        return Pretraining(backbone, head)

    def batch(self, index: int) -> dict[str, Any]:
        """Two views of each of this rank's images; every draw made for the global batch."""
        rows, mine, rng = self.rows(index)
        H, W, _ = self.images.shape
        params = [views.draw(self.cfg.views, len(rows), H, W, rng).take(mine) for _ in range(2)]
        pixels = self.pixels(rows[mine])
        return {"views": [views.render(pixels, p, self.cfg.views, self.mean, self.std, self.runtime.device)
                          for p in params]}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        n = batch["views"][0].shape[0]
        with autocast(self.runtime.device, self.runtime.dtype):
            h, z = model(batch["views"])
        z = z.float()
        loss = nt_xent(z[:n], z[n:], self.cfg.simclr.temperature, self.runtime.env)
        with torch.no_grad():
            pair_cos = torch.nn.functional.cosine_similarity(z[:n], z[n:]).mean()
        return loss, {**self.keep_stats(spread=spread(h[:n])), "positive_cosine": float(pair_cos)}
