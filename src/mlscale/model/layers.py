"""Layers that model families share: norms, positions, attention, MLPs, embeddings.

Each follows the convention of the library its family is compared against, so that
weights and numbers carry over:

    RMSNorm, RotaryEmbedding, apply_rotary   transformers' Llama (rotate-half layout)
    RotaryEmbedding2D, apply_rotary_2d       axial rotary for patch grids (row | column halves)
    attention                                F.scaled_dot_product_attention, GQA built in
    SwiGLU, GeluMLP, PatchEmbed              transformers / timm parameter names
    ConvStem                                 Xiao et al. 2021's convolutional patch embedding
    timestep_embedding, modulate             DiT (diffusers' flip_sin_to_cos=True)
    sincos_pos_embed_2d                      MAE's get_2d_sincos_pos_embed
    resample_pos_embed                       transformers' ViT interpolate_pos_encoding
    positions_in_segments                    rotary positions of packed examples
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ----------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16):
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # low precision: normalise in fp32, cast back, then apply the gain (as transformers)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


# torch's LayerNorm is already what timm and transformers use (gain and optional bias)
LayerNorm = nn.LayerNorm


# ------------------------------------------------------------------- rotary embeddings
def rotary_angles(head_dim: int, positions: Tensor, theta: float) -> Tensor:
    """Rotate-half angles [N, head_dim] for float positions [N]: frequency
    theta^(-2i/head_dim) for the pair (i, i + head_dim/2), so the half-width angles repeat."""
    # the same float32 arithmetic as transformers' LlamaRotaryEmbedding, for parity
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                             device=positions.device) / head_dim))
    angles = positions[:, None] * inv_freq[None, :]
    return torch.cat((angles, angles), dim=-1)


class _RotaryTables(nn.Module):
    """cos/sin buffers rebuilt after every move (a cast to bf16 and back would leave them
    rounded; `to_empty()` after meta-device init would leave garbage)."""

    def _register_tables(self) -> None:
        cos, sin = self._tables(None)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, device: torch.device | None) -> tuple[Tensor, Tensor]:
        raise TypeError(f"{type(self).__name__} must define _tables(device) -> (cos, sin)")

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        super()._apply(fn, recurse)
        if self.cos.device.type != "meta":
            self.cos, self.sin = self._tables(self.cos.device)
        return self


class RotaryEmbedding(_RotaryTables):
    """cos/sin tables [max_len, head_dim] of 1-D rotary embeddings for positions 0..max_len-1."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim, self.max_len, self.theta = head_dim, max_len, theta
        self._register_tables()

    def _tables(self, device: torch.device | None) -> tuple[Tensor, Tensor]:
        pos = torch.arange(self.max_len, dtype=torch.float32, device=device)
        angles = rotary_angles(self.head_dim, pos, self.theta)
        return angles.cos(), angles.sin()

    def forward(self, start: int, length: int, position_ids: Tensor | None) -> tuple[Tensor, Tensor]:
        """Tables for the given positions: [T, head_dim], or [B, T, head_dim]."""
        if position_ids is None:
            return self.cos[start:start + length], self.sin[start:start + length]
        return self.cos[position_ids], self.sin[position_ids]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, T, heads, head_dim] by the position angles (cos/sin: [(B,) T, head_dim])."""
    cos = cos.to(x.dtype).unsqueeze(-2)  # broadcast over heads
    sin = sin.to(x.dtype).unsqueeze(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin  # rotate_half(x) = [-x2, x1]


class RotaryEmbedding2D(_RotaryTables):
    """Axial rotary tables [grid_h * grid_w, head_dim] for a patch grid in row-major order.

    The first half of the head dim rotates by the patch's row, the second half by its
    column, each half as a 1-D rotary embedding of width head_dim/2 (rotate-half layout).
    """

    def __init__(self, head_dim: int, grid: int | tuple[int, int], theta: float = 10000.0):
        if head_dim % 4:
            raise ValueError(f"2-D rotary needs a head dim divisible by 4, got {head_dim}")
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        self._register_tables()

    def _tables(self, device: torch.device | None) -> tuple[Tensor, Tensor]:
        h, w = self.grid
        rows = torch.arange(h, dtype=torch.float32, device=device).repeat_interleave(w)
        cols = torch.arange(w, dtype=torch.float32, device=device).repeat(h)
        half = self.head_dim // 2
        angles = torch.cat((rotary_angles(half, rows, self.theta),
                            rotary_angles(half, cols, self.theta)), dim=-1)
        return angles.cos(), angles.sin()

    def forward(self) -> tuple[Tensor, Tensor]:
        """Tables for every patch: [grid_h * grid_w, head_dim]."""
        return self.cos, self.sin


def apply_rotary_2d(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, N, heads, head_dim] by `RotaryEmbedding2D` tables: each half on its own."""
    half = x.shape[-1] // 2
    return torch.cat((apply_rotary(x[..., :half], cos[..., :half], sin[..., :half]),
                      apply_rotary(x[..., half:], cos[..., half:], sin[..., half:])), dim=-1)


def positions_in_segments(segment_ids: Tensor) -> Tensor:
    """Position of each token within its segment: [[0,0,0,1,1]] -> [[0,1,2,0,1]].

    Segments are runs of equal ids along the sequence (packed examples).
    """
    B, T = segment_ids.shape
    idx = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    # index of the most recent segment start at or before each position
    last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - last_start


# ------------------------------------------------------------------------- attention
def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, mask: Tensor | None = None,
              dropout_p: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(D) + mask) v for q [B, H, T, D] and k, v [B, KV, S, D].

    causal: each query sees keys up to its own index (top-left aligned, as SDPA).
    mask: boolean (True = attend) or additive, broadcastable to [B, H, T, S]; not
    together with `causal`. KV < H (grouped-query heads) must divide H.
    """
    if causal and mask is not None:
        raise ValueError("attention: give either causal=True or a mask, not both")
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p,
        # grouped-query heads are broadcast inside the kernel instead of copied
        enable_gqa=k.shape[1] != q.shape[1])


# ------------------------------------------------------------------------------ MLPs
class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (LLaMA; transformers' LlamaMLP names)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GeluMLP(nn.Module):
    """fc2(gelu(fc1(x))) (ViT, DiT; timm's `Mlp` names). DiT uses approximate="tanh"."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, bias: bool = True,
                 approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, out_dim or dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


# ------------------------------------------------------------------------ embeddings
class PatchEmbed(nn.Module):
    """Image [B, C, H, W] -> patch tokens [B, N, D], row-major, by one strided convolution.

    dynamic_size: accept any image whose sides are multiples of the patch (timm's
    dynamic_img_size); the caller then fits its positions to the grid of each input.
    """

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int,
                 embed_dim: int, bias: bool = True, dynamic_size: bool = False):
        super().__init__()
        self.dynamic_size = dynamic_size
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"image size {self.img_size} is not a multiple of the patch size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        size, p = tuple(x.shape[-2:]), self.patch_size
        if self.dynamic_size and (size[0] % p or size[1] % p):
            raise ValueError(f"image of size {size} is not a multiple of the patch size {p}")
        if not self.dynamic_size and size != self.img_size:
            raise ValueError(f"image of size {size}; this patch embedding takes {self.img_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class ConvStem(nn.Module):
    """Image [B, C, H, W] -> patch tokens [B, N, D] by early convolutions (Xiao et al. 2021,
    "Early convolutions help transformers see better"): `full_res` 3x3 convolutions that
    keep the resolution (channels `width`), then one 3x3 stride-2 convolution per halving
    of the patch side (channels `width`, doubled at each), each followed by a norm and
    ReLU, then a 1x1 projection to the token width. Accepts any image whose sides are
    multiples of the patch.

    norm "batch" is the paper's BatchNorm (statistics of the batch in training, running
    averages in evaluation; the trainer makes it one batch across data-parallel ranks);
    "group" normalises each image on its own (GroupNorm with one group), for batches too
    small for batch statistics.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, width: int, full_res: int = 0,
                 norm: str = "batch"):
        super().__init__()
        halvings = int(math.log2(patch_size)) if patch_size > 1 else 0
        if patch_size < 2 or 2 ** halvings != patch_size:
            raise ValueError(f"a convolutional stem needs a patch size that is a power of 2, got {patch_size}")
        norms = {"batch": nn.BatchNorm2d, "group": lambda c: nn.GroupNorm(1, c)}
        if norm not in norms:
            raise ValueError(f"conv stem norm {norm!r}: expected one of {', '.join(norms)}")
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        channels = in_chans
        for stride, out in [(1, width)] * full_res + [(2, width * 2 ** i) for i in range(halvings)]:
            layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False), norms[norm](out),
                       nn.ReLU(inplace=True)]
            channels = out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, embed_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        size, p = tuple(x.shape[-2:]), self.patch_size
        if size[0] % p or size[1] % p:
            raise ValueError(f"image of size {size} is not a multiple of the patch size {p}")
        return self.proj(self.convs(x)).flatten(2).transpose(1, 2)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000) -> Tensor:
    """Sinusoidal embedding [N, dim] of (possibly fractional) timesteps t [N]: [cos | sin]
    at frequencies max_period^(-i/half), i < half = dim // 2 (DiT; an odd dim pads a zero)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
    if dim % 2:
        emb = torch.cat((emb, torch.zeros_like(emb[:, :1])), dim=-1)
    return emb


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation of x [B, N, D] by per-sample shift and scale [B, D] (DiT)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """[sin | cos] of pos [M] at frequencies 10000^(-i/(dim/2)), i < dim/2 (MAE)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.reshape(-1, 1).double() * omega[None]
    return torch.cat((out.sin(), out.cos()), dim=1)


def sincos_pos_embed_2d(embed_dim: int, grid: int | tuple[int, int], cls_token: bool = False) -> Tensor:
    """Fixed 2-D sin-cos position embeddings [(1 +) h * w, embed_dim], float32, row-major.

    MAE's `get_2d_sincos_pos_embed`: the first half of the channels encodes the column,
    the second half the row (MAE's meshgrid puts w first); a cls token gets zeros.
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embeddings need a width divisible by 4, got {embed_dim}")
    h, w = (grid, grid) if isinstance(grid, int) else grid
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    emb = torch.cat((_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)), dim=1)
    if cls_token:
        emb = torch.cat((torch.zeros(1, embed_dim, dtype=emb.dtype), emb))
    return emb.float()


def resample_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Learned patch positions [1, h * w, D] (row-major) resized to another grid [1, h' * w', D].

    Bicubic on the grid as an image of D channels, align_corners=False, without
    antialiasing: transformers' `interpolate_pos_encoding` (timm's `resample_abs_pos_embed`
    antialiases, which differs only when shrinking). Computed in fp32, returned in pos's dtype.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    D = pos.shape[-1]
    grid = pos.float().reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, D).to(pos.dtype)
