"""The objectives of the self-supervised tasks, and MAE's patch and masking formulas.

    nt_xent(a, b, temperature, env)             SimCLR (Chen et al. 2020)
    dino_loss(teacher, student, center, t_t, t_s)  DINO (Caron et al. 2021)
    update_center(center, teacher, momentum, env), teacher_entropy(teacher, center, t_t)
    patchify / unpatchify / random_masking / mae_loss    MAE (He et al. 2021)

Each equals its reference on the same tensors (tests: lightly's NTXentLoss and DINOLoss,
facebookresearch/mae's formulas). Under data parallelism SimCLR's negatives are the global
batch (embeddings gathered with their gradients) and DINO's center is the mean over all
ranks' teacher outputs, so any number of ranks trains as one process.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mlscale.runtime.dist import DistEnv, gather_with_grad, mean_over_dp_tensor


def nt_xent(a: Tensor, b: Tensor, temperature: float, env: DistEnv | None = None) -> Tensor:
    """Normalised-temperature cross entropy of two views a, b [n, D] of this rank's images.

    Each of the 2n embeddings must pick its partner (the other view of its image) among
    the 2N - 1 other embeddings of the global batch (N = n x data-parallel ranks), by
    cosine similarity / temperature. Mean over this rank's 2n rows (the data-parallel
    gradient average then makes it the mean over the global batch).
    """
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    n = a.shape[0]
    rank = env.dp_rank if env is not None else 0
    every_a = gather_with_grad(a, env) if env is not None else a
    every_b = gather_with_grad(b, env) if env is not None else b
    N = every_a.shape[0]
    logits = torch.cat([a, b]) @ torch.cat([every_a, every_b]).T / temperature  # [2n, 2N]
    mine = torch.arange(n, device=a.device) + rank * n
    own = torch.cat([mine, mine + N])
    partner = torch.cat([mine + N, mine])
    rows = torch.arange(2 * n, device=a.device)
    itself = torch.zeros_like(logits, dtype=torch.bool)
    itself[rows, own] = True
    return F.cross_entropy(logits.masked_fill(itself, float("-inf")), partner)


def dino_loss(teacher: Tensor, student: Tensor, center: Tensor, teacher_temp: float,
              student_temp: float) -> Tensor:
    """Cross entropy from the teacher's centred, sharpened distribution over K prototypes
    to the student's, for every pair of different views.

    teacher [T, B, K]: the teacher's outputs for the T global crops; student [S, B, K]:
    the student's for all S crops, the global ones first (so pair (i, i) is one view
    and is left out). Mean over the T x S - T pairs and the batch.
    """
    q = F.softmax((teacher - center) / teacher_temp, dim=-1)
    log_p = F.log_softmax(student / student_temp, dim=-1)
    pairs = -torch.einsum("tbk,sbk->ts", q, log_p)
    same = torch.eye(*pairs.shape, dtype=torch.bool, device=pairs.device)
    terms = pairs.numel() - int(same.sum())
    return pairs.masked_fill(same, 0).sum() / (terms * teacher.shape[1])


@torch.no_grad()
def update_center(center: Tensor, teacher: Tensor, momentum: float, env: DistEnv | None = None) -> Tensor:
    """The center's EMA after a step: momentum x center + (1 - momentum) x the mean of
    the teacher's outputs [T, B, K] over views, batch and ranks. Returns [1, K]."""
    batch_center = teacher.float().mean(dim=(0, 1)).unsqueeze(0)
    if env is not None:
        batch_center = mean_over_dp_tensor(batch_center, env)
    return center * momentum + batch_center * (1 - momentum)


@torch.no_grad()
def teacher_entropy(teacher: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """Mean entropy of the teacher's centred, sharpened distributions. With the DINO loss
    (their cross entropy to the student's), loss - entropy is the mean teacher-to-student
    KL: the two curves of DINO's collapse analysis. Entropy at ln K with KL near 0 is a
    uniform collapse, entropy near 0 with KL near 0 one prototype taking everything."""
    q = F.softmax((teacher.float() - center) / teacher_temp, dim=-1)
    return -(q * q.clamp_min(1e-12).log()).sum(-1).mean()


def teacher_temperature(step: int, warmup_steps: int, start: float, end: float) -> float:
    """DINO's teacher temperature: linear from `start` to `end` over the warmup, then `end`."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / max(warmup_steps - 1, 1)


def teacher_momentum(step: int, total: int, base: float) -> float:
    """DINO's EMA momentum: cosine from `base` up to 1 over the run."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(total, 1)) + 1) / 2


# ----------------------------------------------------------------------------------- MAE
def patchify(images: Tensor, patch: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C], patches row-major, pixels (row, col, channel)."""
    B, C, H, W = images.shape
    h, w = H // patch, W // patch
    x = images.reshape(B, C, h, patch, w, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, h * w, patch * patch * C)


def unpatchify(patches: Tensor, patch: int, channels: int, height: int, width: int) -> Tensor:
    """The inverse of `patchify`: [B, L, p*p*C] -> [B, C, H, W]."""
    B = patches.shape[0]
    h, w = height // patch, width // patch
    x = patches.reshape(B, h, w, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * patch, w * patch)


def random_masking(noise: Tensor, ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-image random masking from noise [B, L] (uniform in [0, 1)): the patches
    with the smallest noise stay. Returns (keep [B, K] indices of the visible patches,
    mask [B, L] with 1 = masked, in the original order, restore [B, L]: the argsort that
    undoes the shuffle). K = int(L x (1 - ratio))."""
    B, L = noise.shape
    keep_count = int(L * (1 - ratio))
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(B, L, device=noise.device)
    mask[:, :keep_count] = 0
    return shuffle[:, :keep_count], torch.gather(mask, 1, restore), restore


def mae_loss(images: Tensor, pred: Tensor, mask: Tensor, patch: int, norm_pix: bool) -> Tensor:
    """Mean squared error on the masked patches only; with `norm_pix` the target is each
    patch's pixels normalised by their own mean and variance (MAE's default)."""
    target = patchify(images, patch)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()
