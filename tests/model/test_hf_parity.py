"""Export parity: transformers' LlamaForCausalLM, loaded from our exported directory,
computes our logits (within 1e-5 in fp32) and decodes the same greedy tokens."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlscale.evaluate.sampling import generate
from mlscale.export.hf import export_hf
from mlscale.model.llama import LlamaConfig
from mlscale.model.registry import get_family
from mlscale.tokenize.char import build_char_tokenizer
from mlscale.tokenize.tokenizer import load_tokenizer
from sample_data import shakespeare_text


@pytest.fixture(scope="module")
def text() -> str:
    return shakespeare_text()[:20_000]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory, text) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    build_char_tokenizer(sorted(set(text))).save(str(path))
    return path


@pytest.mark.parametrize("n_kv_head", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("fused", [False, True], ids=["pure", "fused"])
def test_transformers_reproduces_our_logits_and_greedy_tokens(tmp_path, tokenizer_file, text, n_kv_head, tie,
                                                              fused):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    tok = load_tokenizer(tokenizer_file)
    cfg = LlamaConfig(n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=64, seq_len=48,
                      vocab_size=tok.vocab_size, tie_embeddings=tie, rope_theta=500.0, init_std=0.2)
    cfg.validate()
    torch.manual_seed(0)
    ours = get_family("llama").build(cfg).eval()
    with torch.no_grad():  # gains away from one, so a misplaced norm weight would show
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    if fused:  # the fused CPU kernels swapped in, as the trainer does on a CPU
        assert get_family("llama").fuse_cpu(ours) > 0
    export_hf(ours, tmp_path, tokenizer_file)

    theirs = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(theirs, LlamaForCausalLM) and theirs.dtype == torch.float32
    theirs.eval()
    assert (theirs.lm_head.weight.data_ptr() == theirs.model.embed_tokens.weight.data_ptr()) == tie

    ids = torch.tensor([tok.encode(text[i * 500:i * 500 + 48]) for i in range(3)])
    with torch.no_grad():
        our_logits, our_loss = ours(ids[:, :-1], ids[:, 1:])
        out = theirs(input_ids=ids, labels=ids)
    torch.testing.assert_close(our_logits, out.logits[:, :-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(our_loss, out.loss, rtol=0, atol=1e-5)

    prompt = ids[:, :8]
    theirs.generation_config.eos_token_id = None  # decode the full length, as ours does
    with torch.no_grad():
        expected = theirs.generate(prompt, max_new_tokens=40, do_sample=False,
                                   pad_token_id=tok.pad_id)
    assert torch.equal(generate(ours, prompt, 40, temperature=0), expected)
