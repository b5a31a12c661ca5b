"""NF4 with double quantisation: the code book, the error bound, the packed layout, Linear4bit."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mlscale.model.quant import (ABSMAX_BLOCK, DYNAMIC_CODE, NF4_BLOCK, NF4_LEVELS, Linear4bit, NF4Tensor,
                                 bits_per_weight, normal_float_levels, quantize_linears)


def test_nf4_levels_are_the_normal_quantiles_of_qlora():
    # bitsandbytes' table equals the derivation from N(0,1) quantiles (QLoRA section 3)
    assert torch.allclose(normal_float_levels(), NF4_LEVELS, atol=1e-7)
    assert NF4_LEVELS.numel() == 16 and NF4_LEVELS[0] == -1 and NF4_LEVELS[-1] == 1
    assert (NF4_LEVELS == 0).sum() == 1  # zero is exact
    assert torch.all(NF4_LEVELS[1:] > NF4_LEVELS[:-1])
    # 8 positive levels and 7 negative: the asymmetric NF4
    assert (NF4_LEVELS > 0).sum() == 8 and (NF4_LEVELS < 0).sum() == 7


def test_dynamic_code_is_bitsandbytes_signed_dynamic_map():
    code = DYNAMIC_CODE
    assert code.numel() == 256 and torch.all(code[1:] >= code[:-1])
    assert code.max() == 1.0 and (code == 0).sum() == 1
    # seven decades: the smallest magnitudes are ~1e-6, the fraction of the top decade is
    # linear with 64 midpoints between 0.1 and 1
    nonzero = code[code != 0].abs()
    assert 1e-7 < nonzero.min() < 1e-5
    top = code[(code > 0.1) & (code < 1)]
    assert top.numel() == 64
    assert torch.allclose(top[1] - top[0], torch.tensor(0.9 / 64), atol=1e-6)


def test_values_on_the_grid_roundtrip_exactly_and_codes_are_nearest():
    torch.manual_seed(0)
    absmax = torch.rand(8) + 0.5
    idx = torch.randint(0, 16, (8, NF4_BLOCK))
    idx[:, 0] = 15  # every block reaches its absmax
    w = NF4_LEVELS[idx] * absmax[:, None]
    q = NF4Tensor.quantize(w.reshape(-1))
    codes = torch.stack([q.packed >> 4, q.packed & 0x0F], 1).reshape(-1)
    assert torch.equal(codes.long(), idx.reshape(-1))
    # exact codes; the scales pass through 8-bit double quantisation, hence a relative bound
    rel = (q.dequantize() - w.reshape(-1)).abs().max() / absmax.max()
    assert rel < 2e-2


def test_dequantisation_error_is_bounded_by_half_the_largest_level_gap():
    torch.manual_seed(1)
    w = torch.randn(96, 200) * 0.02
    q = NF4Tensor.quantize(w)
    back = q.dequantize()
    assert back.shape == w.shape
    flat = F.pad(w.reshape(-1), (0, (-w.numel()) % NF4_BLOCK)).reshape(-1, NF4_BLOCK)
    absmax = flat.abs().amax(1)
    half_gap = (NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max() / 2
    # per block: rounding to the code book (<= half the widest gap) plus the 8-bit scale error
    scale_err = (q.absmax() - absmax).abs()
    bound = absmax * half_gap + scale_err + 1e-7
    err = F.pad((back - w).reshape(-1), (0, flat.numel() - w.numel())).reshape(-1, NF4_BLOCK).abs().amax(1)
    assert torch.all(err <= bound)
    # double-quantised scales stay within 1% of the real absmax
    assert (scale_err / absmax).max() < 1e-2
    # and the quantisation is useful: relative RMS error of a normal matrix ~ 0.1
    rel_rms = ((back - w).pow(2).mean() / w.pow(2).mean()).sqrt()
    assert 0.05 < rel_rms < 0.15


def test_storage_is_about_4_127_bits_per_weight():
    w = torch.randn(256, NF4_BLOCK * ABSMAX_BLOCK // 256 * 4)
    q = NF4Tensor.quantize(w)
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == w.numel() // 2
    assert q.absmax_q.dtype == torch.uint8
    bits = 8 * q.nbytes() / w.numel()
    assert abs(bits - bits_per_weight()) < 0.01
    assert abs(bits_per_weight() - 4.127) < 1e-3


def test_zero_and_odd_sized_tensors():
    z = NF4Tensor.quantize(torch.zeros(3, 5))
    assert torch.equal(z.dequantize(), torch.zeros(3, 5))
    w = torch.randn(7, 13)  # 91 values: padded to two blocks
    assert NF4Tensor.quantize(w).dequantize().shape == (7, 13)


def test_linear4bit_matches_a_linear_with_the_dequantised_weight_forward_and_backward():
    torch.manual_seed(2)
    lin = nn.Linear(64, 48, bias=False)
    q = Linear4bit.from_linear(lin)
    assert not list(q.parameters())  # frozen: nothing to train
    w = q.dequantized_weight()
    x = torch.randn(3, 5, 64, requires_grad=True)
    y = q(x)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = F.linear(x2, w)
    assert torch.allclose(y, y2, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
    # buffers travel in the state dict and rebuild the same layer
    q2 = Linear4bit(64, 48, NF4Tensor.quantize(torch.zeros(48, 64)))
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2(x.detach()), y.detach())


def test_quantize_linears_skips_tied_and_biased_layers():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 16)
            self.a = nn.Linear(16, 32, bias=False)
            self.b = nn.Linear(32, 16)
            self.head = nn.Linear(16, 10, bias=False)
            self.head.weight = self.embed.weight

    m = M()
    assert quantize_linears(m) == ["a"]
    assert isinstance(m.a, Linear4bit) and isinstance(m.b, nn.Linear) and isinstance(m.head, nn.Linear)
