"""Where training runs: device and precision choice, and the peak-FLOPs table behind MFU."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from mlscale.errors import ConfigError

# Dense (no sparsity) peak throughput in FLOP/s per device, from the vendors' data sheets,
# keyed by a substring of torch.cuda.get_device_name(). Order matters: the first match wins,
# so the more specific names come first. "bf16" is the tensor-core figure used for bf16 and
# fp16; "fp32" is TF32 tensor cores (what matmuls use with allow_tf32), the honest peak
# for fp32 training on these parts.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989e12, "fp32": 494.7e12}),
    ("GH200", {"bf16": 989e12, "fp32": 494.7e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp32": 378e12}),
    ("H100", {"bf16": 989e12, "fp32": 494.7e12}),
    ("H800", {"bf16": 989e12, "fp32": 494.7e12}),
    ("B200", {"bf16": 2250e12, "fp32": 1100e12}),
    ("A100", {"bf16": 312e12, "fp32": 156e12}),
    ("A800", {"bf16": 312e12, "fp32": 156e12}),
    ("L40S", {"bf16": 362e12, "fp32": 183e12}),
    ("L4", {"bf16": 121e12, "fp32": 60e12}),
    ("A10G", {"bf16": 70e12, "fp32": 35e12}),
    ("A10", {"bf16": 125e12, "fp32": 62.5e12}),
    ("RTX 4090", {"bf16": 165e12, "fp32": 82.6e12}),
    ("RTX 3090", {"bf16": 71e12, "fp32": 35.6e12}),
    ("V100", {"bf16": 125e12, "fp32": 15.7e12}),  # V100 has no bf16; fp16 tensor cores
    ("T4", {"bf16": 65e12, "fp32": 8.1e12}),
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda, then mps, then cpu; an explicit device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None
                              and torch.backends.mps.is_available()):
        raise ConfigError("train.device=mps but MPS is not available; use train.device=cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device: unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype: fp32 on CPU (bf16 autocast is several times slower there), bf16 on GPU."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"train.dtype: unknown dtype {name!r}; use auto, fp32 or bf16")
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Mixed precision for the forward pass: weights and optimizer stay fp32, matmuls run in `dtype`."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def device_name(device: torch.device) -> str:
    """Human-readable name of the device (the GPU model, or 'cpu')."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense peak FLOP/s of `device` at `dtype`, or None where unknown (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    key = "fp32" if dtype == torch.float32 else "bf16"
    for pattern, figures in PEAK_FLOPS:
        if pattern in name:
            return figures[key]
    return None


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
