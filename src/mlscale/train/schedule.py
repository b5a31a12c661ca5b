"""Learning-rate schedules (linear warmup, then cosine, warmup-stable-decay, linear or constant)
and the weight-decay schedule."""
from __future__ import annotations

import math

from mlscale.train.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) of `cfg.max_steps`.

    Warmup rises linearly to `lr` so that step `warmup_steps - 1` already uses the full rate
    (step 0 uses lr / warmup_steps, never 0, which would waste a step). After warmup:
    - cosine: half a cosine from `lr` down to `min_lr`, reached at the last step;
    - wsd: hold `lr`, then decay linearly to `min_lr` over the last `decay_fraction` of
      the steps (Hu et al. 2024, MiniCPM), so a run can be extended from a stable checkpoint;
    - linear: straight line down to `min_lr`;
    - constant: hold `lr`.
    """
    lr, min_lr, warmup, total = cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return lr
    last = total - 1
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * total)) if cfg.decay_fraction > 0 else 0
        decay_start = max(warmup, total - decay_steps)
        if step < decay_start or decay_steps == 0:
            return lr
        progress = min(1.0, (step - decay_start + 1) / (last - decay_start + 1))
        return lr + (min_lr - lr) * progress
    span = max(1, last - warmup)
    progress = min(1.0, (step - warmup) / span)
    if cfg.schedule == "linear":
        return lr + (min_lr - lr) * progress
    if cfg.schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def wd_at(step: int, cfg: TrainConfig) -> float:
    """Weight decay of optimizer step `step` (0-based) when `weight_decay_end` is set: half a
    cosine from `weight_decay` to `weight_decay_end` over the run (DINO's 0.04 -> 0.4)."""
    progress = step / max(cfg.max_steps - 1, 1)
    return cfg.weight_decay_end + 0.5 * (cfg.weight_decay - cfg.weight_decay_end) * (1 + math.cos(math.pi * progress))
