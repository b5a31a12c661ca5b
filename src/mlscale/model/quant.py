"""NF4 4-bit weights with double quantisation (QLoRA, Dettmers et al. 2023), in plain torch.

A weight matrix is cut into blocks of 64 values. Each block is scaled by its absolute
maximum into [-1, 1] and every value is replaced by the index (4 bits) of the nearest of
the 16 NormalFloat levels: the quantiles of a standard normal, so that each level covers
an equal share of normally distributed weights. Two indices are packed into one byte.

Double quantisation then shrinks the per-block scales: the fp32 absmax of every block
(32 bits / 64 values = 0.5 bit per weight) has its mean subtracted and is itself quantised
to 8 bits with the signed dynamic (exponent + fraction) code of bitsandbytes, in blocks of
256 with one fp32 scale each: 8/64 + 32/(64*256) = 0.127 bit per weight. In all a weight
costs 4.127 bits instead of 32.

`Linear4bit` keeps only the packed state and dequantises blockwise for each matmul; its
backward re-dequantises instead of saving the full-precision weight, so the frozen base
never exists in full precision for longer than one layer's matmul.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

NF4_BLOCK = 64
ABSMAX_BLOCK = 256

# The 16 NF4 levels as bitsandbytes ships them (csrc/kernels.cu, `nf4_data`); QLoRA
# (section 3) derives them from normal quantiles, and `normal_float_levels()` recomputes
# them so a test can check this table against the derivation.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=torch.float32)


def normal_float_levels(offset: float = 0.9677083) -> torch.Tensor:
    """The NF4 levels from first principles: 8 positive and 7 negative normal quantiles, and 0.

    `offset` is the outermost quantile probability, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2, the
    value QLoRA uses so that the extreme levels are not infinite. The asymmetry (one more
    positive level) lets 0 be represented exactly.
    """
    from scipy.stats import norm

    positive = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].numpy())
    negative = -norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].numpy())
    levels = torch.tensor(sorted([*positive.tolist(), 0.0, *negative.tolist()]), dtype=torch.float64)
    return (levels / levels.max()).float()


def dynamic_code(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The 256 levels of the dynamic 8-bit data type (Dettmers 2016; bitsandbytes' default).

    Each level is sign * 10^-e * f: the exponent e (leading zero bits of the code) spans
    seven decades and the remaining bits a linear fraction f in (0.1, 1), so small values
    keep relative precision. QLoRA quantises the block scales with this code.
    """
    non_sign_bits = total_bits - 1
    levels: list[float] = []
    for i in range(max_exponent_bits):
        n_fraction = 2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed \
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        edges = torch.linspace(0.1, 1, n_fraction)
        mids = ((edges[:-1] + edges[1:]) / 2.0) * 10.0 ** (-(max_exponent_bits - 1) + i)
        levels += mids.tolist()
        if signed:
            levels += (-mids).tolist()
    extra = 2 ** (non_sign_bits - max_exponent_bits) - 1
    if extra > 0:  # codes with all exponent bits zero and no indicator bit
        edges = torch.linspace(0.1, 1, extra + 1)
        mids = (edges[:-1] + edges[1:]) / 2.0  # the last decade, 10^0
        levels += mids.tolist()
        if signed:
            levels += (-mids).tolist()
    levels += [0.0, 1.0]
    levels += [0.0] * (2 ** total_bits - len(levels))
    return torch.tensor(sorted(levels), dtype=torch.float32)


DYNAMIC_CODE = dynamic_code()
# byte -> (level of its high nibble, level of its low nibble): one gather decodes two
# weights (2x faster than shifting, masking and gathering twice)
_NF4_PAIRS = torch.stack([NF4_LEVELS.repeat_interleave(16), NF4_LEVELS.repeat(16)], dim=1)


@functools.lru_cache(maxsize=None)
def _pairs_on(device: torch.device) -> torch.Tensor:
    return _NF4_PAIRS.to(device)


def _nearest(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level (levels sorted ascending) for every value."""
    mids = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(values.contiguous(), mids.to(values.device))


def quantize_blockwise(x: torch.Tensor, levels: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax-scale `x` (1-D, length a multiple of `block`) per block and map to level indices.

    Returns (uint8 indices, fp32 absmax per block). An all-zero block keeps scale 0.
    """
    blocks = x.float().reshape(-1, block)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    return _nearest(scaled, levels).to(torch.uint8).reshape(-1), absmax


def dequantize_blockwise(idx: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor, block: int) -> torch.Tensor:
    """Inverse of `quantize_blockwise`: level value times the block's absmax."""
    return (levels.to(absmax.device)[idx.long()].reshape(-1, block) * absmax[:, None]).reshape(-1)


class NF4Tensor:
    """A float tensor stored as packed NF4 codes with double-quantised block scales."""

    def __init__(self, packed: torch.Tensor, absmax_q: torch.Tensor, absmax_scale: torch.Tensor,
                 absmax_offset: torch.Tensor, shape: torch.Size, numel: int):
        self.packed = packed              # uint8 [padded/2]: two 4-bit codes per byte
        self.absmax_q = absmax_q          # uint8 [n_blocks(+pad)]: dynamic-code index of each scale
        self.absmax_scale = absmax_scale  # fp32 [ceil(n_blocks/256)]: absmax of the scales
        self.absmax_offset = absmax_offset  # fp32 scalar: mean scale, subtracted before quantising
        self.shape = torch.Size(shape)
        self.numel = numel

    @classmethod
    def quantize(cls, w: torch.Tensor) -> "NF4Tensor":
        """Quantise `w` (any shape, any float dtype) to NF4 with double quantisation."""
        flat = w.detach().float().reshape(-1)
        numel = flat.numel()
        pad = (-numel) % NF4_BLOCK
        if pad:
            flat = F.pad(flat, (0, pad))
        idx, absmax = quantize_blockwise(flat, NF4_LEVELS, NF4_BLOCK)
        packed = (idx[0::2] << 4) | idx[1::2]
        # Second quantisation: centre the (positive) scales so the signed code is used fully.
        offset = absmax.mean()
        centred = absmax - offset
        pad2 = (-centred.numel()) % ABSMAX_BLOCK
        if pad2:
            centred = F.pad(centred, (0, pad2))
        absmax_q, absmax_scale = quantize_blockwise(centred, DYNAMIC_CODE, ABSMAX_BLOCK)
        return cls(packed, absmax_q, absmax_scale, offset.reshape(()), w.shape, numel)

    def absmax(self) -> torch.Tensor:
        """The per-block fp32 scales, recovered from their 8-bit codes."""
        n_blocks = self.packed.numel() * 2 // NF4_BLOCK
        scales = dequantize_blockwise(self.absmax_q, self.absmax_scale, DYNAMIC_CODE, ABSMAX_BLOCK)
        return scales[:n_blocks] + self.absmax_offset

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The full-precision approximation of the original tensor."""
        pairs = torch.index_select(_pairs_on(self.packed.device), 0, self.packed.int())
        flat = (pairs.reshape(-1, NF4_BLOCK) * self.absmax()[:, None]).reshape(-1)
        return flat[: self.numel].reshape(self.shape).to(dtype)

    def nbytes(self) -> int:
        """Bytes of storage, all four parts."""
        return sum(t.numel() * t.element_size() for t in
                   (self.packed, self.absmax_q, self.absmax_scale, self.absmax_offset))


class _MatMul4bit(torch.autograd.Function):
    """y = x W^T with W dequantised on the fly, in forward and again in backward.

    Saving the dequantised W for backward (what F.linear would do) would keep a
    full-precision copy of every frozen layer alive until the backward pass: exactly the
    memory QLoRA exists to avoid. The weight is frozen, so only grad_x is needed.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "Linear4bit") -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        return x @ layer.dequantized_weight(x.dtype).t()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        grad_x = grad_out @ ctx.layer.dequantized_weight(grad_out.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None


class Linear4bit(nn.Module):
    """A frozen, bias-free linear layer whose weight is stored in NF4 (double-quantised).

    The packed codes and scales are buffers, so `.to(device)` moves them and they are part
    of the state dict; nothing here is trainable.
    """

    def __init__(self, in_features: int, out_features: int, q: NF4Tensor):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("packed", q.packed)
        self.register_buffer("absmax_q", q.absmax_q)
        self.register_buffer("absmax_scale", q.absmax_scale)
        self.register_buffer("absmax_offset", q.absmax_offset)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Linear4bit":
        """Quantise an existing bias-free nn.Linear."""
        if linear.bias is not None:
            raise ValueError("Linear4bit holds bias-free layers only (the LLaMA projections)")
        return cls(linear.in_features, linear.out_features, NF4Tensor.quantize(linear.weight))

    @property
    def weight_shape(self) -> torch.Size:
        return torch.Size((self.out_features, self.in_features))

    def nf4(self) -> NF4Tensor:
        return NF4Tensor(self.packed, self.absmax_q, self.absmax_scale, self.absmax_offset,
                         self.weight_shape, self.out_features * self.in_features)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.nf4().dequantize(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MatMul4bit.apply(x, self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nf4 block={NF4_BLOCK}"


def quantize_linears(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Replace bias-free nn.Linear submodules by Linear4bit (all of them, or those in `names`).

    Modules that share their weight with another (a tied lm_head) are left alone: they are
    not linear layers of their own. Returns the names that were quantised.
    """
    done = []
    shared = {id(p) for n, m in model.named_modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or module.bias is not None:
            continue
        if names is not None and name not in names:
            continue
        if id(module.weight) in shared:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Linear4bit.from_linear(module).to(module.weight.device))
        done.append(name)
    return done


def bits_per_weight() -> float:
    """Storage cost of one NF4 weight with double quantisation, in bits."""
    return 4 + 8 / NF4_BLOCK + 32 / (NF4_BLOCK * ABSMAX_BLOCK)
