import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlscale.evaluate.metrics import (LossTotals, _windows, bits_per_byte, evaluate_tokens,
                                      perplexity, summarize)
from mlscale.model.llama import Llama, LlamaConfig
from mlscale.model.registry import get_family


def model(vocab: int = 40) -> Llama:
    torch.manual_seed(0)
    return get_family("llama").build(LlamaConfig(n_layer=2, n_head=2, d_model=32, seq_len=8, vocab_size=vocab))


def test_windows_predict_every_token_once():
    for n in (2, 9, 17, 100):
        w = _windows(n, 8)
        predicted = [i for s, length in w for i in range(s + 1, s + length + 1)]
        assert predicted == list(range(1, n))
        assert all(length <= 8 for _, length in w)


def test_evaluate_tokens_matches_a_direct_computation():
    m = model()
    tokens = np.random.default_rng(0).integers(0, 40, 50).astype(np.uint16)
    totals = evaluate_tokens(m, tokens, seq_len=8, batch_size=3, progress=False)
    assert totals.tokens == 49
    nats = 0.0
    with torch.no_grad():
        for s in range(0, 49, 8):
            ids = torch.tensor(tokens[s:min(s + 9, 50)].astype(np.int64))[None]
            logits, _ = m(ids[:, :-1])
            nats += F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
    assert totals.loss == pytest.approx(nats / 49, rel=1e-6)
    assert evaluate_tokens(m, tokens, 8, max_tokens=16, progress=False).tokens == 16


def test_uniform_model_gives_log_vocab_and_its_bits_per_byte():
    m = model(vocab=64)
    with torch.no_grad():
        m.lm_head.weight.zero_()  # tied: every logit is 0, so p = 1/64 everywhere
    tokens = np.arange(200) % 64
    totals = evaluate_tokens(m, tokens, seq_len=8, progress=False)
    assert totals.loss == pytest.approx(math.log(64), rel=1e-6)
    out = summarize(totals, bytes_per_token=1.0)
    assert out["perplexity"] == pytest.approx(64, rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(6.0, rel=1e-6)  # 64 choices = 6 bits per 1-byte token
    # the same information spread over 2 bytes per token is half the bits per byte
    assert summarize(totals, 2.0)["bits_per_byte"] == pytest.approx(3.0, rel=1e-6)


def test_helpers():
    assert bits_per_byte(math.log(2), 1.0) == pytest.approx(1.0)
    assert perplexity(0.0) == 1.0 and perplexity(1e4) == float("inf")
    assert math.isnan(LossTotals(0.0, 0).loss)
