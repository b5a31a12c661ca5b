"""Batched image augmentations on tensors, drawn from a seeded generator.

Every random choice of a micro-batch (crop offsets, flips, the mixing weight and box)
comes from `np.random.default_rng([seed, index, ...])`, so a resumed run, or the same
global batch split over several ranks, sees exactly the same augmented images. Whole
batches are transformed at once (gathers and `where`s over [B, C, H, W]), which is what
makes them fast next to per-image PIL transforms.

    x = to_float(images_uint8, mean, std)              # [B, H, W, C] uint8 -> [B, C, H, W]
    x = random_crop(x, padding, rng)                   # pad with zeros, crop back, per image
    x = random_flip(x, rng)                            # horizontal, per image, p = 0.5
    x, y = mix(x, partner, y, partner_y, ...)          # mixup / cutmix with soft targets
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def to_float(images: np.ndarray | Tensor, mean: list[float], std: list[float],
             device: torch.device | str = "cpu") -> Tensor:
    """uint8 images [B, H, W, C] -> normalised float [B, C, H, W] ((x / 255 - mean) / std)."""
    x = torch.from_numpy(np.array(images)).to(device).permute(0, 3, 1, 2).float().div_(255)  # a copy: memmaps are read-only
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop(x: Tensor, padding: int, offsets: np.ndarray) -> Tensor:
    """Pad [B, C, H, W] with zeros by `padding` and crop each image back to H x W at its
    offsets ([B, 2] ints in 0..2*padding: row, column)."""
    if padding == 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    off = torch.as_tensor(offsets, device=x.device)
    rows = (off[:, 0, None] + torch.arange(H, device=x.device))[:, None, :, None]  # [B, 1, H, 1]
    cols = (off[:, 1, None] + torch.arange(W, device=x.device))[:, None, None, :]  # [B, 1, 1, W]
    batch = torch.arange(B, device=x.device)[:, None, None, None]
    chan = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: Tensor, flips: np.ndarray) -> Tensor:
    """Mirror the images of [B, C, H, W] left-right where `flips` [B] is true."""
    mask = torch.as_tensor(flips, device=x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    return F.one_hot(labels, num_classes).float()


def mixup(x: Tensor, partner: Tensor, lam: float) -> Tensor:
    """lam * x + (1 - lam) * partner (Zhang et al. 2018)."""
    return x * lam + partner * (1 - lam)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The box (top, bottom, left, right) that CutMix (Yun et al. 2019) pastes: area
    (1 - lam) of the image, centred uniformly, clipped at the border."""
    ratio = math.sqrt(1 - lam)
    h, w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - h // 2, 0), min(cy + h // 2, height)
    left, right = max(cx - w // 2, 0), min(cx + w // 2, width)
    return top, bottom, left, right


def cutmix(x: Tensor, partner: Tensor, box: tuple[int, int, int, int]) -> tuple[Tensor, float]:
    """x with the box taken from `partner`; returns it and the share of x that is left
    (the label weight, corrected for the part of the box the border clipped)."""
    top, bottom, left, right = box
    out = x.clone()
    out[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
    H, W = x.shape[-2:]
    return out, 1 - (bottom - top) * (right - left) / (H * W)
