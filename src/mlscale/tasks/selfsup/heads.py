"""The heads self-supervised methods put on a backbone's features (thrown away after).

    ProjectionHead   SimCLR: linear -> BatchNorm -> ReLU -> linear (lightly's
                     SimCLRProjectionHead, SimCLR v1's g(.))
    DINOHead         DINO: 3-layer GELU MLP -> L2-normalised bottleneck -> a weight-
                     normalised linear layer onto K prototypes
    Pretraining      backbone + head as one module: what the trainer builds, steps and
                     checkpoints (`backbone.*`, `head.*`)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """z = W2 relu(BN(W1 h)): the space the contrastive loss lives in, so the backbone's
    features keep what the loss would discard (SimCLR section 4.2)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden, bias=False)  # BatchNorm follows: a bias is redundant
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(h))))


class DINOHead(nn.Module):
    """DINO's projection head: MLP (in -> hidden -> hidden -> bottleneck, GELU between),
    L2 normalisation, then K prototypes as rows of a weight-normalised matrix with the
    norm fixed to 1 (`norm_last_layer`, the stable choice for ViTs): the logits are
    cosine similarities to the prototypes. Linear layers start from trunc normal(0.02)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.kaiming_uniform_(self.prototypes, a=5 ** 0.5)  # nn.Linear's init, as DINO's last layer

    def forward(self, h: Tensor) -> Tensor:
        z = F.normalize(self.mlp(h), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))


class Pretraining(nn.Module):
    """A backbone (any family's model with `features`) and the method's head.

    The forward takes a list of views and runs the backbone once per resolution (DINO's
    multi-crop wrapper: global crops together, local crops together), the head once on
    them all; one call per step, so data parallelism sees a single forward."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(features, head outputs) of the views, concatenated in order along the batch."""
        features, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            features.append(self.backbone.features(torch.cat(views[start:end])))
            start = end
        h = torch.cat(features)
        return h, self.head(h)
