"""The shared layers against their references: transformers' Llama pieces, and the timm,
DiT, diffusers and MAE formulas written out here (those libraries are not installed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlscale.model.layers import (ConvStem, GeluMLP, LayerNorm, PatchEmbed, RMSNorm, RotaryEmbedding, RotaryEmbedding2D,
                                  SwiGLU, apply_rotary, apply_rotary_2d, attention, modulate,
                                  positions_in_segments, resample_pos_embed, sincos_pos_embed_2d,
                                  timestep_embedding)


def hf_rotary(head_dim: int, theta: float, position_ids: torch.Tensor):
    """transformers' LlamaRotaryEmbedding tables [B, T, head_dim] for `position_ids` [B, T]."""
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = HFLlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, rope_theta=theta,
                        max_position_embeddings=64)
    rope = LlamaRotaryEmbedding(cfg)
    return rope(torch.zeros(1, dtype=torch.float32), position_ids)


# ----------------------------------------------------------------------------- norms
def test_rmsnorm_matches_transformers_in_fp32_and_bf16():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    ours, theirs = RMSNorm(48, 1e-5), LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 7, 48) * 3
    assert torch.equal(ours(x), theirs(x))  # F.rms_norm gives transformers' fp32 result bit for bit
    ours.bfloat16(), theirs.bfloat16()
    xb = x.bfloat16()
    assert ours(xb).dtype == torch.bfloat16
    torch.testing.assert_close(ours(xb), theirs(xb), rtol=0, atol=0)


def test_rmsnorm_gradients_pass_gradcheck():
    norm = RMSNorm(8, 1e-5).double()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))


def test_layernorm_is_the_usual_formula():
    torch.manual_seed(0)
    norm = LayerNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(4, 16) * 2 + 1
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight + norm.bias
    torch.testing.assert_close(norm(x), ref, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ rotary
@pytest.mark.parametrize("packed", [False, True])
def test_rotary_matches_transformers(packed):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    B, T, H, D = 2, 9, 3, 16
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1], list(range(9))]) if packed else torch.arange(T).expand(B, T)
    rope = RotaryEmbedding(D, 32, 500.0)
    cos, sin = rope(0, T, pos if packed else None)
    hf_cos, hf_sin = hf_rotary(D, 500.0, pos)
    assert torch.equal(cos.expand_as(hf_cos), hf_cos) and torch.equal(sin.expand_as(hf_sin), hf_sin)
    q, k = torch.randn(B, T, H, D), torch.randn(B, T, H, D)
    hq, hk = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), hf_cos, hf_sin)
    assert torch.equal(apply_rotary(q, cos, sin), hq.transpose(1, 2))
    assert torch.equal(apply_rotary(k, cos, sin), hk.transpose(1, 2))


def test_rotary_tables_start_at_the_offset_and_rebuild_after_a_cast():
    rope = RotaryEmbedding(8, 16, 10000.0)
    cos, sin = rope(5, 3, None)
    assert torch.equal(cos, rope.cos[5:8]) and torch.equal(sin, rope.sin[5:8])
    ref = rope.cos.clone()
    rope.to(torch.bfloat16).to(torch.float32)
    assert torch.equal(rope.cos, ref) and "cos" not in rope.state_dict()


def test_rotary_2d_rotates_each_half_by_row_and_column():
    """Against transformers' 1-D rotary applied to each half of the head: the first with
    the patch's row, the second with its column (row-major patches)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    gh, gw, H, D = 3, 4, 2, 16
    rope = RotaryEmbedding2D(D, (gh, gw), 100.0)
    cos, sin = rope()
    assert cos.shape == (gh * gw, D)
    rows = torch.arange(gh).repeat_interleave(gw)[None]
    cols = torch.arange(gw).repeat(gh)[None]
    x = torch.randn(2, gh * gw, H, D)
    out = apply_rotary_2d(x, cos, sin)
    ref = []
    for half, pos in ((x[..., :D // 2], rows), (x[..., D // 2:], cols)):
        c, s = hf_rotary(D // 2, 100.0, pos)
        r, _ = apply_rotary_pos_emb(half.transpose(1, 2), half.transpose(1, 2), c, s)
        ref.append(r.transpose(1, 2))
    torch.testing.assert_close(out, torch.cat(ref, dim=-1), rtol=0, atol=1e-6)


def test_rotary_2d_scores_depend_on_relative_offsets_only():
    rope = RotaryEmbedding2D(8, 5)
    cos, sin = rope()
    q, k = torch.randn(8), torch.randn(8)
    rot_q = apply_rotary_2d(q.expand(1, 25, 1, 8), cos, sin)[0, :, 0]
    rot_k = apply_rotary_2d(k.expand(1, 25, 1, 8), cos, sin)[0, :, 0]
    # patch (r, c) is index 5 r + c: (0,0)-(1,2) and (2,1)-(3,3) have the same offset
    torch.testing.assert_close(rot_q[0] @ rot_k[7], rot_q[11] @ rot_k[18], rtol=0, atol=1e-5)
    assert (rot_q[0] @ rot_k[7] - rot_q[0] @ rot_k[8]).abs() > 1e-4


def test_positions_in_segments():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5], [1, 2, 2, 1, 1, 1]])
    assert positions_in_segments(seg).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5], [0, 0, 1, 0, 1, 2]]


# --------------------------------------------------------------------------- attention
def explicit_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(D) + mask) v with k/v heads repeated for grouped queries."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2), (6, 1)])
def test_attention_matches_explicit_softmax(H, KV):
    g = torch.Generator().manual_seed(H + KV)
    B, T, D = 2, 7, 8
    q = torch.randn(B, H, T, D, dtype=torch.float64, generator=g)
    k, v = (torch.randn(B, KV, T, D, dtype=torch.float64, generator=g) for _ in range(2))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    torch.testing.assert_close(attention(q, k, v, causal=True), explicit_attention(q, k, v, causal))
    full = torch.ones(T, T, dtype=torch.bool)
    torch.testing.assert_close(attention(q, k, v, causal=False), explicit_attention(q, k, v, full))
    # a per-example mask (packed segments) broadcast over heads
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 2, 2, 2]])
    mask = ((seg[:, :, None] == seg[:, None, :]) & causal).unsqueeze(1)
    torch.testing.assert_close(attention(q, k, v, causal=False, mask=mask), explicit_attention(q, k, v, mask))


def test_attention_with_fewer_queries_than_keys_and_both_masks_refused():
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    mask = torch.arange(5)[None, :] <= torch.arange(2, 5)[:, None]  # queries at positions 2..4
    torch.testing.assert_close(attention(q, k, v, causal=False, mask=mask), explicit_attention(q, k, v, mask))
    with pytest.raises(ValueError, match="not both"):
        attention(q, k, v, causal=True, mask=mask)


def test_attention_dropout_is_applied_only_when_asked():
    q = k = v = torch.randn(1, 1, 16, 8)
    torch.manual_seed(0)
    assert not torch.allclose(attention(q, k, v, causal=True, dropout_p=0.5), attention(q, k, v, causal=True))


# ------------------------------------------------------------------------------- MLPs
def test_swiglu_names_and_formula():
    torch.manual_seed(0)
    mlp = SwiGLU(12, 20)
    assert sorted(n for n, _ in mlp.named_parameters()) == ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]
    x = torch.randn(2, 5, 12)
    gate, up, down = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    a = x @ gate.T
    ref = ((a * torch.sigmoid(a)) * (x @ up.T)) @ down.T
    torch.testing.assert_close(mlp(x), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_mlp_is_timms_mlp(approximate):
    torch.manual_seed(0)
    mlp = GeluMLP(12, 48, approximate=approximate)
    assert sorted(n for n, _ in mlp.named_parameters()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    x = torch.randn(3, 12)
    h = x @ mlp.fc1.weight.T + mlp.fc1.bias
    if approximate == "none":  # exact GELU: x Phi(x)
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    else:  # GPT-2 / DiT tanh approximation
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    torch.testing.assert_close(mlp(x), h @ mlp.fc2.weight.T + mlp.fc2.bias, rtol=0, atol=1e-5)
    assert GeluMLP(12, 48, out_dim=5)(x).shape == (3, 5)


# ------------------------------------------------------------------------- embeddings
def test_patch_embed_is_a_linear_map_of_each_row_major_patch():
    torch.manual_seed(0)
    pe = PatchEmbed(img_size=(8, 12), patch_size=4, in_chans=3, embed_dim=10)
    assert pe.grid_size == (2, 3) and pe.num_patches == 6 and pe.proj.weight.shape == (10, 3, 4, 4)
    x = torch.randn(2, 3, 8, 12)
    # timm's patch order: rows of patches, each patch flattened as (channel, y, x)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)                 # [B, C, gh, gw, p, p]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 6, 3 * 16)
    ref = patches @ pe.proj.weight.reshape(10, -1).T + pe.proj.bias
    torch.testing.assert_close(pe(x), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        PatchEmbed(10, 4, 3, 8)
    with pytest.raises(ValueError, match="takes"):
        pe(torch.randn(1, 3, 8, 8))
    # dynamic_size: any multiple of the patch, the same map on each patch
    dyn = PatchEmbed(img_size=(8, 12), patch_size=4, in_chans=3, embed_dim=10, dynamic_size=True)
    dyn.load_state_dict(pe.state_dict())
    torch.testing.assert_close(dyn(x[..., :8, :8]), pe(x).view(2, 2, 3, 10)[:, :, :2].reshape(2, 4, 10),
                               rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        dyn(torch.randn(1, 3, 8, 10))


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_conv_stem_halves_once_per_factor_of_the_patch(norm):
    torch.manual_seed(0)
    stem = ConvStem(patch_size=4, in_chans=3, embed_dim=10, width=8, full_res=1, norm=norm)
    convs = [m for m in stem.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(3, 8, (1, 1)), (8, 8, (2, 2)),
                                                                           (8, 16, (2, 2))]
    x = torch.randn(5, 3, 12, 20)
    tokens = stem(x)
    assert tokens.shape == (5, 3 * 5, 10)  # row-major grid of 4-pixel cells, as PatchEmbed
    assert stem(x * 7).sub(tokens).abs().max() < 1e-3  # normalised after the first convolution: blind to scale
    # group: each image on its own, in training too; batch: the batch's statistics in
    # training, the running averages (per image again) in evaluation
    alone = stem(x[2:3])
    assert torch.allclose(alone, tokens[2:3], atol=1e-5) == (norm == "group")
    stem.eval()
    torch.testing.assert_close(stem(x[2:3]), stem(x)[2:3], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        stem(torch.randn(1, 3, 12, 10))
    with pytest.raises(ValueError, match="power of 2"):
        ConvStem(patch_size=6, in_chans=3, embed_dim=10, width=8)


def test_resample_pos_embed_is_bicubic_on_the_grid():
    pos = torch.randn(1, 3 * 4, 6)
    assert resample_pos_embed(pos, (3, 4), (3, 4)) is pos
    out = resample_pos_embed(pos, (3, 4), (5, 7))
    ref = F.interpolate(pos.view(1, 3, 4, 6).permute(0, 3, 1, 2), size=(5, 7), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, ref.permute(0, 2, 3, 1).reshape(1, 35, 6), rtol=0, atol=0)
    # a constant table stays constant (the cubic weights sum to one), in the input's dtype
    flat = torch.ones(1, 9, 4, dtype=torch.bfloat16)
    assert torch.equal(resample_pos_embed(flat, (3, 3), (6, 6)), torch.ones(1, 36, 4, dtype=torch.bfloat16))


@pytest.mark.parametrize("dim", [16, 17])
def test_timestep_embedding_is_dits_and_diffusers(dim):
    t = torch.tensor([0.0, 1.0, 17.0, 999.0, 0.5])
    # DiT's TimestepEmbedder.timestep_embedding, written out in numpy
    half = dim // 2
    freqs = np.exp(-math.log(10000) * np.arange(half, dtype=np.float32) / half)
    args = t.numpy()[:, None].astype(np.float32) * freqs[None]
    ref = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    if dim % 2:
        ref = np.concatenate([ref, np.zeros_like(ref[:, :1])], axis=-1)
    out = timestep_embedding(t, dim)
    assert out.shape == (5, dim) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.from_numpy(ref), rtol=0, atol=1e-5)
    # diffusers' get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - 0)
    emb = t[:, None] * torch.exp(exponent)[None]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    torch.testing.assert_close(out[:, :2 * half], emb, rtol=0, atol=1e-5)


def test_modulate_is_dits_adaln():
    x, shift, scale = torch.randn(2, 5, 8), torch.randn(2, 8), torch.randn(2, 8)
    ref = torch.stack([x[b] * (1 + scale[b]) + shift[b] for b in range(2)])
    torch.testing.assert_close(modulate(x, shift, scale), ref)


def mae_2d_sincos(embed_dim: int, grid_size: int, cls_token: bool) -> np.ndarray:
    """MAE's util/pos_embed.py get_2d_sincos_pos_embed, as written there (np.float64)."""
    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


@pytest.mark.parametrize("cls_token", [False, True])
def test_2d_sincos_pos_embed_is_maes(cls_token):
    ours = sincos_pos_embed_2d(32, 6, cls_token=cls_token)
    ref = torch.from_numpy(mae_2d_sincos(32, 6, cls_token)).float()
    assert ours.shape == (36 + cls_token, 32) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # a rectangular grid: row-major patches, the second half of the channels follows the row
    rect = sincos_pos_embed_2d(16, (2, 3))
    assert torch.equal(rect[3, :8], rect[0, :8]) and not torch.equal(rect[3, 8:], rect[0, 8:])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(30, 4)
