"""Fused CPU kernels (C++, compiled on first use) and the autograd Functions over them.

    cpu_kernels.cpp / cpu_kernels.py   the elementwise kernels, with PyTorch fallbacks
    cpu_fused.py                       hand-written backward passes built on them

Models never call these directly: a family swaps its modules for fused ones from
outside (e.g. `mlscale.model.llama.fused.apply_cpu_kernels`).
"""
