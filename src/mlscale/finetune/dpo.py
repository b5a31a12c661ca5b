"""Direct Preference Optimization (Rafailov et al. 2023), the `dpo` task: the loss and
sequence log-probabilities.

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

from mlscale.artifacts import fingerprint_obj
from mlscale.config import to_dict
from mlscale.errors import ArtifactError
from mlscale.finetune.data import IGNORE, PreferenceRows
from mlscale.finetune.task import FinetuneTask
from mlscale.model.lora import disable_adapters
from mlscale.runtime import Runtime
from mlscale.runtime.device import autocast
from mlscale.train.task import register_task

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


@register_task
class PreferenceTuning(FinetuneTask):
    """DPO on preference pairs against the frozen starting model's log-probabilities."""

    name = "dpo"
    objective = "dpo"

    def build_model(self) -> nn.Module:
        """The model, and the reference log-probabilities while it is still exactly the
        base (a fresh adapter adds 0), before any checkpoint is loaded into it."""
        model = super().build_model()
        cfg, data, runtime = self.cfg, self.data, self.runtime
        ref_fp = fingerprint_obj({"inputs": self.inputs(), "template": to_dict(cfg.template),
                                  "seq_len": data.seq_len, "method": cfg.method})

        def refs(key: str, rows: PreferenceRows) -> tuple[torch.Tensor, torch.Tensor]:
            def compute() -> tuple[torch.Tensor, torch.Tensor]:
                with disable_adapters(model):
                    return reference_logps(model, rows, cfg.train.batch_size, runtime.device, runtime.dtype)

            if not runtime.is_main:  # every rank computes the same values; rank 0 keeps the cache
                return compute()
            return load_or_compute_ref(self.out_dir / REF_CACHE, key, ref_fp, compute)

        self.ref_train = refs("train", data.train)
        self.ref_val = refs("val", data.val) if data.val is not None else None
        return model

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        pairs = self.rows(index, len(self.data.train))
        batch = self.data.train.batch(pairs, self.runtime.device)
        batch["pairs"] = torch.from_numpy(pairs)
        return batch

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        device, idx = self.runtime.device, batch["pairs"]
        with autocast(device, self.runtime.dtype):
            chosen, rejected = pair_logps(model, batch)
        return dpo_loss(chosen.float(), rejected.float(), self.ref_train[0][idx].to(device),
                        self.ref_train[1][idx].to(device), self.cfg.dpo.beta)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["x"] != self.data.train.pad_id).sum())

    def log_suffix(self, metrics: dict[str, float]) -> str:
        return f" | margin {metrics['reward_margin']:.3f} | acc {metrics['reward_accuracy']:.2f}"

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.data.val is None:
            return {}
        return evaluate_dpo(model, self.data.val, self.ref_val, self.cfg.dpo.beta,
                            self.cfg.train.batch_size, self.runtime)
