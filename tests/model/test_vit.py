"""The vision transformer: shapes at any patch-multiple size, positions, registers,
qk-norm, pooling, gradients, accounting, the family hooks, the tensor-parallel split and
timm's state-dict names."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mlscale.config import from_dict
from mlscale.errors import ArtifactError, ConfigError
from mlscale.model.layers import sincos_pos_embed_2d
from mlscale.model.registry import get_family
from mlscale.model.vit import ViT, ViTConfig
from mlscale.model.vit.timm import load_timm_state_dict, timm_kwargs, timm_state_dict

TINY = dict(image_size=16, patch_size=4, in_channels=1, num_classes=5, d_model=32, n_layer=2, n_head=4)


def make(seed: int = 0, **kw) -> ViT:
    torch.manual_seed(seed)
    model = get_family("vit").build(ViTConfig(**{**TINY, **kw})).eval()
    with torch.no_grad():  # tokens, biases and gains away from their init, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith(("cls_token", "reg_token", "bias", "gamma")):
                p.normal_(0, 0.3)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("pos,stem", [("learned", "patch"), ("sincos", "patch"), ("learned", "conv")])
def test_any_image_size_divisible_by_the_patch_runs(pool, pos, stem):
    m = make(pool=pool, pos_embed=pos, registers=2, stem=stem)
    for H, W in [(16, 16), (8, 8), (28, 28), (12, 20)]:
        x = torch.randn(3, 1, H, W)
        n = (H // 4) * (W // 4)
        assert m(x).shape == (3, 5)
        assert m.features(x).shape == (3, 32)
        assert m.tokens(x).shape == (3, int(pool == "cls") + 2 + n, 32)
    with pytest.raises(ValueError, match="multiple of the patch"):
        m(torch.randn(1, 1, 18, 16))
    assert make(num_classes=0)(torch.randn(2, 1, 16, 16)).shape == (2, 32)  # no head: the features


def test_learned_positions_are_used_as_stored_and_resized_bicubically():
    m = make()
    assert m.pos_embed.shape == (1, 1 + 16, 32)
    assert torch.equal(m.patch_positions((4, 4), m.pos_embed), m.pos_embed[:, 1:])
    grid = m.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(6, 10), mode="bicubic", align_corners=False)
    out = m.patch_positions((6, 10), m.pos_embed)
    torch.testing.assert_close(out, ref.permute(0, 2, 3, 1).reshape(1, 60, 32), rtol=0, atol=1e-6)
    # the class token's position is never resized: the same class-token input at every size
    x = torch.randn(1, 1, 24, 40)
    assert m.tokens(x).shape[1] == 1 + 60


def test_sincos_positions_are_computed_for_the_grid_and_are_not_parameters():
    m = make(pos_embed="sincos")
    assert m.pos_embed is None and "pos_embed" not in dict(m.named_parameters())
    out = m.patch_positions((3, 5), torch.zeros(1))
    torch.testing.assert_close(out[0], sincos_pos_embed_2d(32, (3, 5)), rtol=0, atol=0)


# ------------------------------------------------------------------ registers, pooling
def test_registers_attend_but_are_left_out_of_pooling():
    m = make(pool="mean", registers=3)
    assert m.reg_token.shape == (1, 3, 32) and m.cls_token is None
    x = torch.randn(2, 1, 16, 16)
    tokens = m.tokens(x)
    assert tokens.shape == (2, 3 + 16, 32)
    feats = m.features(x)
    torch.testing.assert_close(feats, m.norm(tokens[:, 3:].mean(1)), rtol=0, atol=1e-6)
    assert not torch.allclose(feats, m.norm(tokens.mean(1)), atol=1e-3)
    # they take part in attention: other register values change the patch tokens
    with torch.no_grad():
        m.reg_token.add_(torch.randn_like(m.reg_token))  # (a constant would vanish in LayerNorm)
    assert not torch.allclose(m.tokens(x)[:, 3:], tokens[:, 3:], atol=1e-4)


def test_cls_pooling_normalises_the_class_token_and_mean_pooling_the_patch_mean():
    cls = make(registers=2)
    x = torch.randn(2, 1, 16, 16)
    tokens = cls.tokens(x)
    # the last block computes the class token's output alone: the same numbers as all
    # tokens' (up to the rounding of smaller matmuls), for the train and eval paths
    torch.testing.assert_close(cls.features(x), cls.norm(tokens[:, 0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(cls(x), cls.head(cls.norm(tokens[:, 0])), rtol=0, atol=1e-6)
    last = cls.blocks[-1]
    before = cls.blocks[0](cls.embed(x))
    torch.testing.assert_close(last(before, queries=3), last(before)[:, :3], rtol=0, atol=1e-6)
    mean = make(pool="mean")
    assert mean.cls_token is None and mean.pos_embed.shape == (1, 16, 32)
    torch.testing.assert_close(mean.features(x), mean.norm(mean.tokens(x).mean(1)), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- qk-norm
def test_qk_norm_normalises_each_heads_queries_and_keys():
    m = make(qk_norm=True)
    attn = m.blocks[0].attn
    assert attn.q_norm.weight.shape == (8,) and attn.k_norm.weight.shape == (8,)
    x = torch.randn(2, 5, 32)
    B, T, H, D = 2, 5, 4, 8
    q = attn.q_norm(attn.q_proj(x).view(B, T, H, D)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(x).view(B, T, H, D)).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, H, D).transpose(1, 2)
    w = (q @ k.transpose(-1, -2) / D ** 0.5).softmax(-1)
    ref = attn.o_proj((w @ v).transpose(1, 2).reshape(B, T, H * D))
    torch.testing.assert_close(attn(x), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries(qk_norm):
    m = make(qk_norm=qk_norm)
    x = torch.randn(2, 1, 16, 16)
    before = m(x)
    with torch.no_grad():
        for block in m.blocks:
            block.attn.q_proj.weight.mul_(20)
            block.attn.q_proj.bias.mul_(20)
    assert torch.allclose(m(x), before, atol=1e-4) == qk_norm


# ------------------------------------------------------------------------ training
def test_every_parameter_gets_a_gradient():
    m = make(registers=2, qk_norm=True, layer_scale=0.1, drop_path=0.1, dropout=0.1).train()
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 5, (4,))
    F.cross_entropy(m(x), y).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dropout_and_drop_path_act_in_training_only():
    m = make(drop_path=0.5, dropout=0.2)
    x = torch.randn(4, 1, 16, 16)
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(1)
    assert not torch.allclose(m(x), m.eval()(x))


def test_init_follows_timm():
    torch.manual_seed(0)
    fresh = get_family("vit").build(ViTConfig(**{**TINY, "d_model": 256, "n_head": 4, "layer_scale": 1e-4}))
    w = fresh.blocks[0].mlp.fc1.weight
    assert w.std().item() == pytest.approx(0.02 * 0.88, rel=0.05)  # normal truncated at 2 std
    assert w.abs().max().item() <= 0.04
    assert fresh.cls_token.abs().max().item() < 1e-4 and torch.all(fresh.blocks[0].ls1.gamma == 1e-4)
    assert torch.all(fresh.blocks[0].attn.q_proj.bias == 0) and torch.all(fresh.norm.weight == 1)


# ---------------------------------------------------------------------- accounting
@pytest.mark.parametrize("kw", [{}, {"pool": "mean", "registers": 2}, {"stem": "conv", "stem_width": 8}])
def test_flops_per_image_is_what_torch_counts(kw):
    m = make(**kw).train()
    x = torch.randn(2, 1, 16, 16)
    # the math backend spells attention as matmuls, which the counter sees
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        m(x).sum().backward()
    assert counter.get_total_flops() / 2 == m.flops_per_image(16)
    fam = get_family("vit")
    assert fam.flops_per_sample(m.cfg, m) == m.flops_per_image() == m.flops_per_image(16)
    assert m.flops_per_image(32) > 4 * m.flops_per_image(16)  # more tokens, and attention grows as T^2


def test_num_params_counts_every_weight():
    m = make(registers=2)
    d, L, h = 32, 2, 128
    block = 4 * (d * d + d) + (d * h + h) + (h * d + d) + 4 * d
    embed = (16 * d + d) + d + 2 * d + (1 + 16) * d
    assert m.num_params() == L * block + embed + 2 * d + (d * 5 + 5)


# ------------------------------------------------------------------------- family
def test_the_family_builds_from_a_config_section():
    fam = get_family("vit")
    cfg = from_dict(fam.config_cls, {"family": "vit", "d_model": 48, "n_head": 3, "registers": 4})
    assert isinstance(fam.build(cfg), ViT) and len(fam.blocks(fam.build(cfg))) == 6
    with pytest.raises(ConfigError, match="divisible by model.n_head"):
        from_dict(ViTConfig, {"d_model": 50, "n_head": 3})
    with pytest.raises(ConfigError, match="multiple of model.patch_size"):
        from_dict(ViTConfig, {"image_size": 30, "patch_size": 4})
    with pytest.raises(ConfigError, match="pool"):
        from_dict(ViTConfig, {"pool": "max"})
    with pytest.raises(ConfigError, match="did you mean 'model.registers'"):
        from_dict(ViTConfig, {"register": 4}, prefix="model.")


def test_no_weight_decay_spares_positions_tokens_norms_and_biases():
    fam = get_family("vit")
    m = make(registers=2, qk_norm=True, layer_scale=0.1)
    spared = {n for n, p in m.named_parameters() if fam.no_weight_decay(n, p)}
    decayed = {n for n, p in m.named_parameters()} - spared
    assert {"pos_embed", "cls_token", "reg_token", "norm.weight", "head.bias",
            "blocks.0.attn.q_norm.weight", "blocks.1.ls2.gamma"} <= spared
    assert decayed == {n for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1}
    assert fam.no_weight_decay("_orig_mod.pos_embed", m.pos_embed)


# --------------------------------------------------------------- tensor parallelism
def _rank_slice(module: torch.nn.Module, name: str, rank: int, tp: int, style: str) -> None:
    """Keep rank `rank`'s shard of the linear layer `name` (Megatron column / row split)."""
    lin = module.get_submodule(name)
    with torch.no_grad():
        if style == "colwise":
            lin.weight = torch.nn.Parameter(lin.weight.chunk(tp, 0)[rank].clone())
            lin.bias = torch.nn.Parameter(lin.bias.chunk(tp, 0)[rank].clone())
        else:  # rowwise: the input split, the bias added once after the sum
            lin.weight = torch.nn.Parameter(lin.weight.chunk(tp, 1)[rank].clone())
            lin.bias = torch.nn.Parameter(lin.bias * (rank == 0))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_the_tp_plan_splits_a_block_into_shards_that_sum_to_it(qk_norm):
    fam = get_family("vit")
    block = make(qk_norm=qk_norm).blocks[0]
    for name in fam.tp_plan:
        assert isinstance(block.get_submodule(name), torch.nn.Linear), name
    tp, h = 2, torch.randn(2, 7, 32)
    attn_sum, mlp_sum = 0, 0
    for rank in range(tp):
        shard = copy.deepcopy(block)
        fam.tp_shard(shard, tp)
        assert shard.attn.n_head == 2
        for name, style in fam.tp_plan.items():
            _rank_slice(shard, name, rank, tp, style)
        attn_sum = attn_sum + shard.attn(h)
        mlp_sum = mlp_sum + shard.mlp(h)
    torch.testing.assert_close(attn_sum, block.attn(h), rtol=0, atol=1e-5)
    torch.testing.assert_close(mlp_sum, block.mlp(h), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="parallel.tp=3"):
        fam.tp_shard(copy.deepcopy(block), 3)


# ----------------------------------------------------------------------------- timm
def _timm_names(cfg: ViTConfig) -> set[str]:
    """The parameter names of timm's VisionTransformer(**timm_kwargs(cfg)), written out."""
    names = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "head.weight", "head.bias"}
    names |= {"cls_token"} if cfg.pool == "cls" else set()
    names |= {"reg_token"} if cfg.registers else set()
    names |= {f"{'norm' if cfg.pool == 'cls' else 'fc_norm'}.{p}" for p in ("weight", "bias")}
    for i in range(cfg.n_layer):
        mods = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for mod in mods + (("attn.q_norm", "attn.k_norm") if cfg.qk_norm else ()):
            names |= {f"blocks.{i}.{mod}.weight", f"blocks.{i}.{mod}.bias"}
        if cfg.layer_scale:
            names |= {f"blocks.{i}.ls1.gamma", f"blocks.{i}.ls2.gamma"}
    return names


@pytest.mark.parametrize("kw", [{}, {"registers": 2, "qk_norm": True, "layer_scale": 0.1},
                                {"pool": "mean", "registers": 1}, {"pos_embed": "sincos"}],
                         ids=["plain", "reg-qknorm-ls", "mean-reg", "sincos"])
def test_timm_state_dict_round_trip(kw):
    ours = make(**kw)
    sd = timm_state_dict(ours)
    assert set(sd) == _timm_names(ours.cfg)
    assert sd["blocks.0.attn.qkv.weight"].shape == (96, 32)
    # timm's layout: registers (no_embed_class) position the patches only
    n_pos = 16 + (int(ours.cfg.pool == "cls") if not ours.cfg.registers else 0)
    assert sd["pos_embed"].shape == (1, n_pos, 32)
    kwargs = timm_kwargs(ours.cfg)
    assert kwargs["no_embed_class"] == bool(ours.cfg.registers) and kwargs["embed_dim"] == 32
    fresh = make(seed=1, **{**kw, "pos_embed": "learned"})
    load_timm_state_dict(fresh, sd)
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(fresh(x), ours(x), rtol=0, atol=1e-5)


def test_timm_positions_of_prefix_tokens_fold_into_the_tokens():
    """timm's two layouts of a register model (positions for every token, or for the
    patches only) are the same function once each token's position joins it."""
    ours = make(registers=2)
    patches_only = timm_state_dict(ours)
    every_token = dict(patches_only)
    p_prefix = torch.randn(1, 3, 32)  # class token, two registers
    every_token["pos_embed"] = torch.cat((p_prefix, patches_only["pos_embed"]), dim=1)
    every_token["cls_token"] = patches_only["cls_token"] - p_prefix[:, :1]
    every_token["reg_token"] = patches_only["reg_token"] - p_prefix[:, 1:]
    x = torch.randn(2, 1, 16, 16)
    for sd in (patches_only, every_token):
        torch.testing.assert_close(load_timm_state_dict(make(seed=2, registers=2), sd)(x), ours(x),
                                   rtol=0, atol=1e-5)


def test_timm_state_dict_of_another_shape_is_refused():
    sd = timm_state_dict(make())
    with pytest.raises(ArtifactError, match="no timm counterpart"):
        load_timm_state_dict(make(stem="conv"), sd)
    with pytest.raises(ArtifactError, match="no timm counterpart"):
        timm_state_dict(make(stem="conv"))
    with pytest.raises(ArtifactError, match="missing: reg_token"):
        load_timm_state_dict(make(registers=1), sd)
    with pytest.raises(ArtifactError, match="shape"):
        load_timm_state_dict(make(d_model=64), sd)
    with pytest.raises(ArtifactError, match="learned"):
        load_timm_state_dict(make(pos_embed="sincos"), sd)
