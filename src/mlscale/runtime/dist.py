"""Where this process sits among ranks: torchrun's process group and the (dp, tp) mesh.

The device mesh is 2-D (dp, tp): ranks that share a tp group see the same batch, the dp
groups split the global batch. One process (no torchrun) is a world of one, and every
function here is then a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mlscale.errors import ConfigError


@dataclass
class DistEnv:
    """Where this process sits: its rank, the data-parallel share and the device mesh."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    tp: int = 1
    mesh: object | None = None  # torch.distributed.device_mesh.DeviceMesh when world_size > 1

    @property
    def dp_size(self) -> int:
        return self.world_size // self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(tp: int, backend: str, device: torch.device) -> DistEnv:
    """Join the process group torchrun set up (no-op for a single process).

    tp: tensor-parallel degree (parallel.tp); backend: auto | gloo | nccl (parallel.backend).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if tp > 1:
            raise ConfigError(f"parallel.tp={tp} needs {tp} processes: launch with "
                              f"torchrun --nproc_per_node={tp} (or --nproc {tp})")
        return DistEnv()
    if world % tp:
        raise ConfigError(f"parallel.tp={tp} must divide the number of processes ({world})")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world // tp, tp), mesh_dim_names=("dp", "tp"))
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, tp=tp, mesh=mesh)


def rank_device(device: torch.device, env: DistEnv) -> torch.device:
    """One GPU per local rank; CPU ranks share the CPU."""
    return torch.device("cuda", env.local_rank) if device.type == "cuda" else device


def destroy_distributed(finished: bool = True) -> None:
    """Leave the process group. After a finished run, first wait for every rank: a rank that
    tears gloo down while a peer still has work in flight can abort that peer at exit
    ("terminate called without an active exception"). After a failure, no barrier: the
    other ranks may never arrive."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def mean_over_dp(value: Tensor, env: DistEnv) -> Tensor:
    """The global mean of a per-rank scalar (each dp rank had an equal share of the batch)."""
    if not env.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    # tp ranks of one dp group hold the same value: dividing by the world averages dp ranks
    return value / env.world_size


def barrier(env: DistEnv) -> None:
    """Wait for every rank (a no-op on one process)."""
    if env.distributed:
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the sum, over ranks, of the
    gradient of its own rows (what a loss over the gathered batch sends back to them)."""

    @staticmethod
    def forward(ctx, x: Tensor, group: object) -> Tensor:  # type: ignore[override]
        ctx.group, ctx.rows = group, x.shape[0]
        ctx.rank = dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None


def dp_group(env: DistEnv) -> object | None:
    """The process group of this rank's data-parallel peers (None on one process)."""
    if not env.distributed:
        return None
    return env.mesh["dp"].get_group()  # type: ignore[index]


def gather_with_grad(x: Tensor, env: DistEnv) -> Tensor:
    """The rows of x [n, ...] of every data-parallel rank, rank order, [dp * n, ...], with
    gradients flowing back to each rank's own rows (SimCLR's global negatives)."""
    if env.dp_size == 1:
        return x
    return _GatherWithGrad.apply(x, dp_group(env))


def mean_over_dp_tensor(x: Tensor, env: DistEnv) -> Tensor:
    """The element-wise mean of x over the data-parallel ranks, no gradient (DINO's center)."""
    if env.dp_size == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=dp_group(env))
    return x / env.dp_size
