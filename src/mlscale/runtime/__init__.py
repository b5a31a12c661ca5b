"""Where a job runs: the device, the compute dtype and the process's place among ranks.

Ground floor: tasks, the trainer and the evaluators all take a `Runtime`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mlscale.runtime.dist import DistEnv


@dataclass
class Runtime:
    """Where this process trains: device, compute dtype, and its place among ranks."""

    device: torch.device
    dtype: torch.dtype
    env: DistEnv = field(default_factory=DistEnv)

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.is_main


def setup_runtime(device: str = "auto", dtype: str = "auto", threads: int = 0, tp: int = 1,
                  backend: str = "auto") -> Runtime:
    """The device and dtype; under torchrun, also the process group and device mesh."""
    from mlscale.runtime.device import resolve_device, resolve_dtype
    from mlscale.runtime.dist import init_distributed, rank_device

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if threads:
        torch.set_num_threads(threads)
    env = init_distributed(tp, backend, dev)
    dev = rank_device(dev, env)
    if dev.type == "cuda":
        # TF32 matmuls: what every GPU trainer uses for the fp32 parts
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device=dev, dtype=dt, env=env)
