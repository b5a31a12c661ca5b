"""LoRA: init, merge/unmerge, disable, save/load round trip, PEFT file layout and parity."""
import json
import math

import pytest
import torch
import torch.nn as nn

from mlscale.errors import ArtifactError, ConfigError
from mlscale.model.llama import Llama, LlamaConfig
from mlscale.model.registry import get_family
from mlscale.model.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraConfig, LoRALinear, apply_lora,
                                count_parameters, disable_adapters, load_adapter, lora_layers,
                                lora_state_dict, merge_and_unload, merge_lora, peft_module_name,
                                save_adapter, unmerge_lora)
from mlscale.model.quant import Linear4bit, quantize_linears

ALL = ["q", "k", "v", "o", "gate", "up", "down"]


def tiny_model(seed: int = 0, tie: bool = True) -> Llama:
    torch.manual_seed(seed)
    cfg = LlamaConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, seq_len=32, vocab_size=61,
                      tie_embeddings=tie)
    return get_family("llama").build(cfg).eval()


def randomise_adapters(model: nn.Module, seed: int = 1) -> None:
    """A fresh adapter is a no-op (B = 0); give B weights so the tests see the update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.05)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[0]


def assert_layers_return_their_base(model: nn.Module) -> None:
    """Each LoRA layer's output is exactly its base layer's (the adapter adds nothing).

    Checked layer by layer because whole-model logits of a plain model go through the
    fused CPU kernels (one matmul for q/k/v, interleaved rotary pairs), which agree with
    the per-layer path of an adapted model only to rounding (see the tolerance below).
    """
    g = torch.Generator().manual_seed(3)
    for _, layer in lora_layers(model):
        x = torch.randn(2, 5, layer.in_features, generator=g)
        with torch.no_grad():
            assert torch.equal(layer(x), layer.base(x))


# plain model (fused CPU kernels) against the per-layer path: the same sums, reordered
PATHS_ATOL = 1e-6


X = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(5))


def test_fresh_adapter_is_a_no_op_and_init_follows_peft():
    model = tiny_model()
    before = logits(model, X)
    names = apply_lora(model, LoraConfig(r=4, alpha=8, targets=ALL))
    assert len(names) == 2 * 7
    assert_layers_return_their_base(model)
    assert torch.allclose(logits(model, X), before, atol=PATHS_ATOL, rtol=0)
    layer = model.blocks[0].attn.q_proj
    assert isinstance(layer, LoRALinear) and layer.scaling == 2.0
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    # kaiming_uniform(a=sqrt 5): U(-b, b) with b = 1/sqrt(fan_in)
    bound = 1 / math.sqrt(layer.in_features)
    a = layer.lora_A.weight
    assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound


def test_only_adapters_train_and_the_share_is_small():
    model = tiny_model()
    apply_lora(model, LoraConfig(r=2, targets=["q", "v"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    n_train, n_total = count_parameters(model)
    d, kv = 32, 2 * 8
    assert n_train == 2 * (2 * (d + d) + 2 * (d + kv))  # r * (in + out) per adapter
    assert n_total == model.num_params()
    out = model(X, X)[1]
    out.backward()
    assert model.blocks[0].attn.q_proj.lora_B.weight.grad is not None
    assert model.embed.weight.grad is None


def test_forward_is_base_plus_scaled_low_rank_update():
    lin = nn.Linear(8, 6, bias=False)
    layer = LoRALinear(lin, r=3, alpha=6)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 8)
    expected = x @ lin.weight.T + 2.0 * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_merged_equals_unmerged_and_unmerge_restores_the_base():
    model = tiny_model()
    base_w = model.blocks[1].mlp.down_proj.weight.detach().clone()
    apply_lora(model, LoraConfig(r=4, alpha=16, targets=ALL))
    randomise_adapters(model)
    unmerged = logits(model, X)
    merge_lora(model)
    assert torch.allclose(logits(model, X), unmerged, atol=1e-5)
    assert not torch.allclose(model.blocks[1].mlp.down_proj.base.weight, base_w)
    unmerge_lora(model)
    assert torch.allclose(model.blocks[1].mlp.down_proj.base.weight, base_w, atol=1e-6)
    assert torch.allclose(logits(model, X), unmerged, atol=1e-5)


def test_disabled_adapter_equals_the_base_even_when_merged():
    model = tiny_model()
    base = logits(model, X)
    apply_lora(model, LoraConfig(r=4, targets=ALL))
    randomise_adapters(model)
    tuned = logits(model, X)
    assert not torch.allclose(tuned, base, atol=1e-3)
    with disable_adapters(model):
        assert_layers_return_their_base(model)
        assert torch.allclose(logits(model, X), base, atol=PATHS_ATOL, rtol=0)
    assert torch.equal(logits(model, X), tuned)
    merge_lora(model)
    with disable_adapters(model):
        assert torch.allclose(logits(model, X), base, atol=1e-5)
    assert all(layer.merged for _, layer in lora_layers(model))


def test_save_load_round_trip_is_exact_and_small(tmp_path):
    model = tiny_model()
    cfg = LoraConfig(r=4, alpha=8, dropout=0.1, targets=["q", "k", "gate"])
    apply_lora(model, cfg)
    randomise_adapters(model)
    model.eval()
    expected = logits(model, X)
    save_adapter(model, cfg, tmp_path / "a", base_model_name_or_path="base")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    meta = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    assert meta["peft_type"] == "LORA" and meta["r"] == 4 and meta["lora_alpha"] == 8
    assert meta["target_modules"] == ["q_proj", "k_proj", "gate_proj"]
    assert "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight" in lora_state_dict(model)

    fresh = tiny_model()
    loaded_cfg = load_adapter(fresh, tmp_path / "a")
    assert loaded_cfg == cfg
    fresh.eval()
    assert torch.equal(logits(fresh, X), expected)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), fresh.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_loading_into_another_shape_or_a_damaged_adapter_fails_clearly(tmp_path):
    model = tiny_model()
    cfg = LoraConfig(r=4, targets=["q"])
    apply_lora(model, cfg)
    save_adapter(model, cfg, tmp_path / "a")
    torch.manual_seed(0)
    wider = get_family("llama").build(LlamaConfig(n_layer=2, n_head=4, d_model=64, seq_len=32, vocab_size=61))
    with pytest.raises(ArtifactError, match="shape"):
        load_adapter(wider, tmp_path / "a")
    with pytest.raises(ArtifactError, match="not a LoRA adapter directory"):
        load_adapter(tiny_model(), tmp_path)
    with pytest.raises(ConfigError, match="lora.targets"):
        LoraConfig(targets=[]).validate()


def test_merge_and_unload_gives_a_plain_model_with_the_same_logits():
    model = tiny_model()
    apply_lora(model, LoraConfig(r=4, targets=ALL))
    randomise_adapters(model)
    expected = logits(model, X)
    merge_and_unload(model)
    assert not list(lora_layers(model))
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("_proj"))
    assert torch.allclose(logits(model, X), expected, atol=1e-5)


def test_qlora_adapter_on_a_4bit_base_trains_and_merges_through_dequantisation():
    model = tiny_model()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    quantize_linears(model, names)
    apply_lora(model, LoraConfig(r=4, targets=ALL))
    assert isinstance(model.blocks[0].mlp.up_proj.base, Linear4bit)
    randomise_adapters(model)
    loss = model(X, X)[1]
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    expected = logits(model, X)
    with pytest.raises(ArtifactError, match="4-bit"):
        model.blocks[0].attn.q_proj.merge()
    merge_and_unload(model)
    assert torch.allclose(logits(model, X), expected, atol=1e-5)


def test_peft_module_names():
    assert peft_module_name("blocks.3.attn.o_proj") == "base_model.model.model.layers.3.self_attn.o_proj"
    assert peft_module_name("blocks.0.mlp.up_proj") == "base_model.model.model.layers.0.mlp.up_proj"


def _hf_llama(tmp_path, tie: bool):
    """A random transformers Llama saved as a Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tie)
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    return hf


@pytest.mark.parametrize("tie", [False, True])
def test_peft_applies_our_saved_adapter_to_the_same_base_with_equal_logits(tmp_path, tie):
    """Acceptance: PeftModel.from_pretrained on our adapter directory == our LoRA model."""
    from peft import PeftModel

    from mlscale.model.llama.hf import load_hf

    hf = _hf_llama(tmp_path, tie)
    ours, _ = load_hf(tmp_path / "hf")
    ours.eval()
    with torch.no_grad():
        base_logits = hf(X).logits
        assert torch.allclose(ours(X)[0], base_logits, atol=1e-5)
    cfg = LoraConfig(r=4, alpha=8, targets=ALL)
    apply_lora(ours, cfg)
    randomise_adapters(ours)
    save_adapter(ours, cfg, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "hf"))
    peft_model = PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs = peft_model(X).logits
        mine = ours(X)[0]
    assert (mine - theirs).abs().max() < 1e-5
    assert (mine - base_logits).abs().max() > 1e-2  # the adapter really changes the output
    with torch.no_grad(), peft_model.disable_adapter(), disable_adapters(ours):
        assert torch.allclose(ours(X)[0], peft_model(X).logits, atol=1e-5)
        assert torch.allclose(ours(X)[0], base_logits, atol=1e-5)
    # PEFT's merge equals ours too
    merged = peft_model.merge_and_unload()
    merge_lora(ours)
    with torch.no_grad():
        assert (ours(X)[0] - merged(X).logits).abs().max() < 1e-5


def test_an_adapter_trained_by_peft_loads_into_our_model(tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from mlscale.model.llama.hf import load_hf

    hf = _hf_llama(tmp_path, tie=False)
    peft_model = get_peft_model(hf, PeftLoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(str(tmp_path / "peft_adapter"))
    ours, _ = load_hf(tmp_path / "hf")
    cfg = load_adapter(ours, tmp_path / "peft_adapter")
    assert cfg.r == 2 and cfg.alpha == 4 and sorted(cfg.targets) == ["down", "q"]
    peft_model.eval()
    ours.eval()
    with torch.no_grad():
        assert (ours(X)[0] - peft_model(X).logits).abs().max() < 1e-5


def test_peft_on_the_base_exported_by_export_hf_matches_our_lora_model(tmp_path):
    """Acceptance, the other direction: our base written by `export_hf`, loaded by
    transformers, with our saved adapter applied by PEFT."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from mlscale.export.hf import export_hf

    ours = tiny_model(seed=4, tie=False)
    export_hf(ours, tmp_path / "base")
    cfg = LoraConfig(r=8, alpha=16, targets=ALL)
    apply_lora(ours, cfg)
    randomise_adapters(ours, seed=2)
    save_adapter(ours, cfg, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "base"), torch_dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert (ours(X)[0] - peft_model(X).logits).abs().max() < 1e-5
