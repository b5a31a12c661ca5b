"""The ViT with its fused attention swapped in (`vit/fused.py`) against the pure model:
the same logits and gradients, the module path for hooked or LoRA projections, and the
trainer applying it."""
import copy

import pytest
import torch
import torch.nn.functional as F

from mlscale.model.registry import get_family
from mlscale.model.vit import ViTConfig
from mlscale.model.vit.fused import FusedAttention, apply_fused


def build(**kw):
    torch.manual_seed(0)
    cfg = dict(image_size=16, patch_size=4, num_classes=5, d_model=32, n_layer=2, n_head=4)
    return get_family("vit").build(ViTConfig(**{**cfg, **kw})).train()


def fused_copy(model):
    out = copy.deepcopy(model)
    assert apply_fused(out) == model.cfg.n_layer and apply_fused(out) == 0  # once only
    assert all(type(b.attn) is FusedAttention for b in out.blocks)
    assert out.state_dict().keys() == model.state_dict().keys()
    return out


@pytest.mark.parametrize("kw", [{}, {"qk_norm": True, "registers": 2, "pool": "mean"}])
def test_fused_attention_gives_the_pure_models_logits_and_gradients(kw):
    pure = build(**kw)
    fused = fused_copy(pure)
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 3, 4])
    la, lb = pure(x), fused(x)
    torch.testing.assert_close(lb, la, rtol=0, atol=1e-5)
    F.cross_entropy(la, y).backward()
    F.cross_entropy(lb, y).backward()
    for (name, pa), pb in zip(pure.named_parameters(), fused.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_hooked_or_lora_projections_take_the_module_path():
    from mlscale.model.lora import LoraConfig, apply_lora

    pure = build()
    hooked = fused_copy(pure)
    calls = []
    for b in hooked.blocks:
        b.attn.k_proj.register_forward_hook(lambda mod, args, out: calls.append(1))
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(hooked(x), pure(x), rtol=0, atol=1e-5)
    assert len(calls) == pure.cfg.n_layer  # the hooks ran: the module path was taken
    lora_pure, lora_fused = copy.deepcopy(pure), fused_copy(pure)
    for m in (lora_pure, lora_fused):
        torch.manual_seed(1)  # the same adapters in both
        apply_lora(m, LoraConfig(r=2, targets=["q", "v"]))
        m.eval()  # no LoRA dropout
        for name, p in m.named_parameters():
            if "lora_b" in name.lower():
                torch.nn.init.normal_(p, std=0.1)  # LoRA B starts at zero: make the adapters count
    torch.testing.assert_close(lora_fused(x), lora_pure(x), rtol=0, atol=1e-5)
    assert not torch.allclose(lora_pure(x), pure(x), atol=1e-4)


def test_the_family_swaps_it_in():
    fam = get_family("vit")
    assert fam.fuse_cpu is not None and fam.fuse_cpu(build(n_layer=3)) == 3
