"""Augmented views of a batch of images, as self-supervised methods need them, in one pass.

A view is a random resized crop (with an optional left-right flip), colour or grey-level
jitter, an optional grey conversion, Gaussian blur and solarisation, then the per-channel
normalisation. The parameters of every image are drawn up front from a numpy generator
(`draw`), so a micro-batch depends only on (seed, index, view) and any number of ranks
sees the same views as one process; the pixels of the whole batch are then transformed
at once (`render`): one `grid_sample` does every crop, resize and flip, one grouped
convolution every blur.

    spec = ViewSpec(size=28, min_scale=0.08)
    params = draw(spec, batch_size, height, width, rng)
    views = render(images_uint8, params, spec, mean, std)        # [B, C, size, size]

The rules are torchvision's (RandomResizedCrop's ten tries, then the whole image;
ColorJitter's factor ranges; RandomGrayscale's luma weights; Solarize at 0.5), with two
departures: jitter applies brightness, contrast and saturation in that fixed order, and
has no hue shift (the data sets this is used on here are grey; saturation still covers
colour). Resizing is bilinear without antialiasing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mlscale.config import option

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale
CROP_TRIES = 10


@dataclass
class ViewSpec:
    """How one kind of view is made (SimCLR's defaults; DINO's crops set their own)."""

    size: int = option(0, "side of the view in pixels; 0 = the images' own", min=0)
    min_scale: float = option(0.08, "random resized crop: smallest share of the image's area", min=0.0, max=1.0)
    max_scale: float = option(1.0, "random resized crop: largest share of the image's area", min=0.0, max=1.0)
    flip: bool = option(True, "left-right flips with probability 0.5 (off where mirroring changes meaning)")
    jitter_prob: float = option(0.8, "probability of colour / grey-level jitter", min=0.0, max=1.0)
    brightness: float = option(0.4, "jitter: brightness factor drawn from [1 - b, 1 + b]", min=0.0)
    contrast: float = option(0.4, "jitter: contrast factor drawn from [1 - c, 1 + c]", min=0.0)
    saturation: float = option(0.4, "jitter: saturation factor from [1 - s, 1 + s] (colour images)", min=0.0)
    gray_prob: float = option(0.2, "probability of converting to grey (colour images)", min=0.0, max=1.0)
    blur_prob: float = option(0.5, "probability of Gaussian blur", min=0.0, max=1.0)
    blur_sigma_min: float = option(0.1, "blur: smallest sigma in pixels", min=0.0)
    blur_sigma_max: float = option(2.0, "blur: largest sigma in pixels", min=0.0)
    solarize_prob: float = option(0.0, "probability of solarising (invert pixels above 0.5)", min=0.0, max=1.0)

    def out_size(self, height: int) -> int:
        return self.size or height


@dataclass
class ViewParams:
    """Every random choice for a batch of views: one row per image."""

    boxes: np.ndarray        # [B, 4] float: top, left, height, width in pixels
    flips: np.ndarray        # [B] bool
    jitter: np.ndarray       # [B, 3] float: brightness, contrast, saturation factors (1 = none)
    gray: np.ndarray         # [B] bool
    sigmas: np.ndarray       # [B] float: blur sigma, 0 = no blur
    solarize: np.ndarray     # [B] bool

    def take(self, rows: np.ndarray) -> "ViewParams":
        """The parameters of some of the images (this rank's share of the global batch)."""
        return ViewParams(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], rng: np.random.Generator,
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params for n images at once: up to ten tries of
    (area share, log-uniform aspect ratio); an image with no try inside falls back to the
    largest centred crop of an allowed ratio. Returns [n, 4]: top, left, height, width."""
    area = height * width * rng.uniform(scale[0], scale[1], size=(n, CROP_TRIES))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, CROP_TRIES)))
    w = np.round(np.sqrt(area * aspect))
    h = np.round(np.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(axis=1)
    rows = np.arange(n)
    h, w = h[rows, first], w[rows, first]
    top = np.floor(rng.random(n) * (height - h + 1))
    left = np.floor(rng.random(n) * (width - w + 1))
    ok = fits.any(axis=1)
    if not ok.all():  # fallback: the whole image, cut to the nearest allowed aspect ratio
        fh, fw = height, width
        if width / height < ratio[0]:
            fh = round(width / ratio[0])
        elif width / height > ratio[1]:
            fw = round(height * ratio[1])
        h, w = np.where(ok, h, fh), np.where(ok, w, fw)
        top = np.where(ok, top, (height - fh) // 2)
        left = np.where(ok, left, (width - fw) // 2)
    return np.stack([top, left, h, w], axis=1).astype(np.float64)


def draw(spec: ViewSpec, n: int, height: int, width: int, rng: np.random.Generator) -> ViewParams:
    """The random choices of `n` views of `height` x `width` images."""
    boxes = crop_boxes(n, height, width, (spec.min_scale, spec.max_scale), rng)
    flips = (rng.random(n) < 0.5) & spec.flip
    jittered = rng.random(n) < spec.jitter_prob
    spans = np.array([spec.brightness, spec.contrast, spec.saturation])
    factors = rng.uniform(1 - spans, 1 + spans, size=(n, 3)).clip(min=0)
    jitter = np.where(jittered[:, None], factors, 1.0)
    gray = rng.random(n) < spec.gray_prob
    blurred = rng.random(n) < spec.blur_prob
    sigmas = np.where(blurred, rng.uniform(spec.blur_sigma_min, spec.blur_sigma_max, size=n), 0.0)
    solarize = rng.random(n) < spec.solarize_prob
    return ViewParams(boxes, flips, jitter, gray, sigmas, solarize)


def crop_resize(x: Tensor, boxes: np.ndarray, flips: np.ndarray, size: int) -> Tensor:
    """Each image's box of x [B, C, H, W], resized bilinearly to size x size and mirrored
    where `flips`: one affine `grid_sample` for the batch."""
    B, _, H, W = x.shape
    b = torch.as_tensor(boxes, dtype=x.dtype, device=x.device)
    top, left, h, w = b.unbind(1)
    sign = 1 - 2 * torch.as_tensor(flips, dtype=x.dtype, device=x.device)
    theta = torch.zeros(B, 2, 3, dtype=x.dtype, device=x.device)
    # output coordinates in [-1, 1] (pixel edges) -> the box's edges in the input
    theta[:, 0, 0] = sign * w / W
    theta[:, 0, 2] = (2 * left + w) / W - 1
    theta[:, 1, 1] = h / H
    theta[:, 1, 2] = (2 * top + h) / H - 1
    grid = F.affine_grid(theta, [B, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grey(x: Tensor) -> Tensor:
    """Luma [B, 1, H, W] of x [B, C, H, W] (x itself when it has one channel)."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def jitter(x: Tensor, factors: np.ndarray) -> Tensor:
    """Brightness, contrast and saturation (factors [B, 3]) as torchvision's ColorJitter:
    blend with black, with the image's mean grey, with its grey version; clamp to [0, 1]."""
    f = torch.as_tensor(factors, dtype=x.dtype, device=x.device).view(-1, 3, 1, 1, 1).unbind(1)

    def blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:  # torchvision's _blend
        return (ratio * a + (1 - ratio) * b).clamp(0, 1)

    x = blend(x, torch.zeros_like(x), f[0])
    x = blend(x, grey(x).mean(dim=(1, 2, 3), keepdim=True), f[1])
    return blend(x, grey(x), f[2]) if x.shape[1] == 3 else x


def gaussian_blur(x: Tensor, sigmas: np.ndarray, max_sigma: float | None = None) -> Tensor:
    """Separable Gaussian blur with a sigma per image (0 = untouched), edges replicated;
    the kernel reaches 3 x `max_sigma` (the largest sigma a spec can draw, so the result
    does not depend on which images share the batch), as PIL's GaussianBlur(radius)."""
    blurred = np.flatnonzero(sigmas > 0)
    if len(blurred) == 0:
        return x
    B, C, H, W = x.shape
    s = torch.as_tensor(sigmas[blurred], dtype=x.dtype, device=x.device)
    radius = int(math.ceil(3 * max(float(s.max()), max_sigma or 0.0)))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps[None] / s[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(C, 0)  # [n*C, k]
    sub = x[blurred].reshape(1, -1, H, W)
    sub = F.pad(sub, (radius, radius, radius, radius), mode="replicate")
    sub = F.conv2d(sub, kernel[:, None, :, None], groups=sub.shape[1])
    sub = F.conv2d(sub, kernel[:, None, None, :], groups=sub.shape[1])
    out = x.clone()
    out[blurred] = sub.view(len(blurred), C, H, W)
    return out


def render(images: np.ndarray | Tensor, params: ViewParams, spec: ViewSpec, mean: list[float],
           std: list[float], device: torch.device | str = "cpu") -> Tensor:
    """Views [B, C, size, size], normalised, of uint8 images [B, H, W, C] under `params`."""
    x = torch.as_tensor(np.asarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255)
    x = crop_resize(x, params.boxes, params.flips, spec.out_size(x.shape[2]))
    if not np.all(params.jitter == 1):
        x = jitter(x, params.jitter)
    if x.shape[1] == 3 and params.gray.any():
        g = torch.as_tensor(params.gray, device=x.device).view(-1, 1, 1, 1)
        x = torch.where(g, grey(x).expand_as(x), x)
    x = gaussian_blur(x, params.sigmas, spec.blur_sigma_max)
    if params.solarize.any():
        s = torch.as_tensor(params.solarize, device=x.device).view(-1, 1, 1, 1)
        x = torch.where(s & (x >= 0.5), 1 - x, x)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    sd = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / sd
