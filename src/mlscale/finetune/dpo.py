"""Direct Preference Optimization (Rafailov et al. 2023): the loss and sequence log-probabilities.

With pi the policy being trained and ref the frozen starting model, for a prompt x with
a preferred answer y_w and a dispreferred y_l:

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) ] )

The implicit rewards are beta * (log pi - log ref); their margin (chosen minus rejected)
and how often it is positive (reward accuracy) are what a DPO run is watched by. The
reference log-probabilities never change, so they are computed once, before training,
and cached (FT/ref_logps.safetensors).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mlscale.errors import ArtifactError
from mlscale.finetune.data import IGNORE, PreferenceRows
from mlscale.train.device import autocast
from mlscale.train.loop import Runtime

REF_CACHE = "ref_logps.safetensors"


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean sigmoid DPO loss over the pairs, and the reward statistics to log.

    Inputs are summed log-probabilities of each answer given its prompt, one per pair.
    """
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    stats = {
        "rewards_chosen": chosen_rewards.mean().item(),
        "rewards_rejected": rejected_rewards.mean().item(),
        "reward_margin": (chosen_rewards - rejected_rewards).mean().item(),
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps_chosen": policy_chosen.detach().mean().item(),
        "logps_rejected": policy_rejected.detach().mean().item(),
    }
    return losses.mean(), stats


def sequence_logps(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over each row of log p(y_t | x_<=t) at the learned positions (y != -100)."""
    logits, _ = model(x)
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = y != IGNORE
    token_logp = logp.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (token_logp * mask).sum(dim=-1)


def pair_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs of a `PreferenceRows.batch` (chosen rows first)."""
    logps = sequence_logps(model, batch["x"], batch["y"])
    n = logps.shape[0] // 2
    return logps[:n], logps[n:]


@torch.no_grad()
def reference_logps(model: nn.Module, rows: PreferenceRows, batch_size: int, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference (chosen, rejected) log-probs of every pair, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for start in range(0, len(rows), batch_size):
            pairs = np.arange(start, min(start + batch_size, len(rows)))
            with autocast(device, dtype):
                c, r = pair_logps(model, rows.batch(pairs, device))
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def load_or_compute_ref(path: Path, key: str, fingerprint: str, compute) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached reference log-probs of split `key`, or `compute()` them and cache them.

    The cache is keyed by a fingerprint of the base model, data and template, so a stale
    cache is recomputed rather than silently reused.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mlscale.artifacts import atomic_path

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # a torn or foreign file: recompute rather than trust it
            raise ArtifactError(f"{path} is corrupt ({e}); delete it and rerun") from None
        if meta.get("fingerprint") != fingerprint:
            tensors, meta = {}, {}
    if f"{key}.chosen" in tensors:
        return tensors[f"{key}.chosen"], tensors[f"{key}.rejected"]
    chosen, rejected = compute()
    tensors[f"{key}.chosen"], tensors[f"{key}.rejected"] = chosen.contiguous(), rejected.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"fingerprint": fingerprint})
    return chosen, rejected


@torch.no_grad()
def evaluate_dpo(model: nn.Module, rows: PreferenceRows, ref: tuple[torch.Tensor, torch.Tensor],
                 beta: float, batch_size: int, runtime: Runtime) -> dict[str, float]:
    """DPO loss and reward statistics over every held-out pair."""
    was = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(rows), batch_size):
        pairs = np.arange(start, min(start + batch_size, len(rows)))
        with autocast(runtime.device, runtime.dtype):
            c, r = pair_logps(model, rows.batch(pairs, runtime.device))
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    model.train(was)
    loss, stats = dpo_loss(torch.cat(chosen), torch.cat(rejected), ref[0], ref[1], beta)
    return {"val_loss": float(loss), **{f"val_{k}": v for k, v in stats.items()}}
