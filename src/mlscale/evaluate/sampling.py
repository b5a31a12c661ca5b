"""Sampling from a `Llama`: temperature, top-k, nucleus (top-p), KV-cached decoding.

Decoding keeps the keys and values of every position in a `KVCache`, so each new token
costs one position's forward pass instead of the whole context's. When the text outgrows
the model's context (`model.seq_len`), the oldest tokens are dropped and the remaining
window is recomputed, exactly what a cache-free loop that crops its input would do
(positions are absolute within the window, so a cache cannot simply slide).
"""
from __future__ import annotations

import torch
from torch import Tensor

from mlscale.errors import ConfigError


def check_sampling(temperature: float, top_k: int | None, top_p: float | None,
                   flags: bool = False) -> None:
    """Refuse sampling settings outside their ranges; `flags` names them as CLI flags."""
    def name(key: str) -> str:
        return "--" + key.replace("_", "-") if flags else key

    if temperature < 0:
        raise ConfigError(f"{name('temperature')} must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"{name('top_k')} must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"{name('top_p')} must be in (0, 1], got {top_p}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of mass top_p.

    logits: [..., vocab]. The nucleus (Holtzman et al. 2020) is the smallest set of most
    likely tokens whose probability sums to at least top_p; the most likely token is
    always kept. Both filters may be combined (top-k first, as transformers does).
    """
    check_sampling(1.0, top_k, top_p)
    out = logits
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        # mass of the tokens ranked strictly before each one: drop a token once that
        # mass already reaches top_p (so the token that crosses top_p stays in)
        before = probs.cumsum(dim=-1) - probs
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_next(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One token per row of `logits` [B, vocab] -> [B]; temperature 0 is greedy (argmax)."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(filtered, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    idx: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Tensor:
    """Continue the prompts `idx` [B, T] by up to `max_new_tokens` tokens; returns [B, T + n].

    model: a `mlscale.model.llama.Llama`. temperature 0 decodes greedily. `generator`
    (on the model's device) makes sampling reproducible. With `eos_id`, a row that has
    produced eos keeps producing eos, and decoding stops once every row has.
    """
    check_sampling(temperature, top_k, top_p)
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"prompt ids must be [batch, length>0], got shape {tuple(idx.shape)}")
    if max_new_tokens <= 0:
        return idx
    seq_len = model.cfg.seq_len
    was_training = model.training
    model.eval()
    try:
        out = idx
        cache = model.new_kv_cache(idx.shape[0], min(seq_len, idx.shape[1] + max_new_tokens),
                                   device=idx.device)
        window = out[:, -cache.max_len:]
        logits = model(window, kv_cache=cache)[0][:, -1]
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                              generator=generator)
            if eos_id is not None:
                nxt = nxt.masked_fill(finished, eos_id)
                finished |= nxt == eos_id
            out = torch.cat((out, nxt[:, None]), dim=1)
            if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
                break
            if cache.pos < cache.max_len:
                logits = model(nxt[:, None], kv_cache=cache)[0][:, -1]
            else:  # context full: slide the window and recompute it
                cache.reset()
                logits = model(out[:, -cache.max_len:], kv_cache=cache)[0][:, -1]
        return out
    finally:
        model.train(was_training)
