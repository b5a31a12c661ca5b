"""Parallelism, activation checkpointing and compile, applied to the model from outside.

The model file (`model/llama.py`) is single-device code. Everything that spreads it over
devices or trades compute for memory is applied here, always in this order (as
torchtitan does, and for the same reasons):

1. tensor parallel (Megatron-style column/row splits of attention and MLP, DTensor):
   must see the plain modules, before anything wraps them;
2. activation checkpointing (per block: "full" recomputes the whole block in backward,
   "selective" keeps matmul and attention outputs and recomputes the cheap pointwise ops);
3. torch.compile (whole model, or per block under FSDP so each block's all-gather
   stays outside the compiled graph);
4. data parallel: DDP, or FSDP2 `fully_shard` (ZeRO-3: parameters, gradients and
   optimizer state sharded over the data-parallel ranks), per block and then the root.

The device mesh is 2-D (dp, tp): ranks that share a tp group see the same batch, the
dp groups split the global batch (see `tokenize.batches.sample_batch`).

Launch with `torchrun --nproc_per_node=N -m mlscale pretrain ...` or
`mlscale pretrain --nproc N`; gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mlscale.errors import ConfigError
from mlscale.train.config import ParallelConfig

CHECKPOINTING = ("none", "full", "selective")


# ------------------------------------------------------------------------ process groups
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


def init_distributed(cfg: ParallelConfig, device: torch.device) -> DistEnv:
    """Join the process group torchrun set up (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if cfg.tp > 1:
            raise ConfigError(f"parallel.tp={cfg.tp} needs {cfg.tp} processes: launch with "
                              f"torchrun --nproc_per_node={cfg.tp} (or mlscale pretrain --nproc {cfg.tp})")
        return DistEnv()
    if world % cfg.tp:
        raise ConfigError(f"parallel.tp={cfg.tp} must divide the number of processes ({world})")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world // cfg.tp, cfg.tp), mesh_dim_names=("dp", "tp"))
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, tp=cfg.tp, mesh=mesh)


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


# ------------------------------------------------------------------------ the four steps
def apply_tensor_parallel(model: nn.Module, env: DistEnv) -> None:
    """Split attention heads and the MLP hidden width over the tp ranks (Megatron-LM).

    q/k/v and gate/up are column-parallel (each rank computes its heads / hidden slice),
    o and down are row-parallel (partial sums all-reduced), so one block costs two
    all-reduces forward and two backward. Embeddings, norms and the head stay replicated.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = env.tp
    cfg = model.cfg
    if cfg.n_head % tp or cfg.kv_heads % tp or cfg.ffn_hidden % tp:
        raise ConfigError(f"parallel.tp={tp} must divide model.n_head={cfg.n_head}, the kv heads "
                          f"({cfg.kv_heads}) and the MLP width ({cfg.ffn_hidden})")
    tp_mesh = env.mesh["tp"]
    plan = {
        "attn.q_proj": ColwiseParallel(), "attn.k_proj": ColwiseParallel(),
        "attn.v_proj": ColwiseParallel(), "attn.o_proj": RowwiseParallel(),
        "mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }
    for block in model.blocks:
        parallelize_module(block, tp_mesh, plan)
        # each rank now holds n_head/tp heads: the attention reshapes use these counts
        block.attn.n_head //= tp
        block.attn.kv_heads //= tp


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Recompute each block's activations in backward instead of storing them.

    The block's `forward` is replaced on the instance, so parameter names (and hence
    checkpoints and exports) do not change.
    """
    if mode == "none":
        return
    if mode not in CHECKPOINTING:
        raise ConfigError(f"train.activation_checkpointing: {mode!r} is not one of {', '.join(CHECKPOINTING)}")
    from torch.utils.checkpoint import checkpoint

    context_fn = _selective_context if mode == "selective" else None
    for block in model.blocks:
        inner = block.forward

        def checkpointed(*args, _inner=inner, **kwargs):
            if context_fn is None:
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, context_fn=context_fn, **kwargs)

        block.forward = checkpointed


def _selective_context():
    """Selective activation checkpointing: keep matmul and attention outputs (expensive
    to recompute), recompute norms, activations and rotary embeddings (cheap)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    aten = torch.ops.aten
    save = {aten.mm.default, aten.addmm.default, aten.bmm.default,
            aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_efficient_attention.default,
            aten._scaled_dot_product_flash_attention_for_cpu.default}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_compile(model: nn.Module, per_block: bool) -> None:
    """torch.compile in place (names unchanged): the whole model, or each block."""
    if per_block:
        for block in model.blocks:
            block.compile()
    else:
        model.compile()


def apply_data_parallel(model: nn.Module, cfg: ParallelConfig, env: DistEnv,
                        param_dtype: torch.dtype | None = None) -> nn.Module:
    """Wrap for data parallelism; returns the module the training loop calls.

    DDP returns a wrapper (its `.module` is the model); FSDP2 shards in place and returns
    the model itself.
    """
    if env.mesh is None:
        return model  # one process, no device mesh: nothing to wrap
    if cfg.strategy == "fsdp":
        # also on a dp mesh of one rank (tensor parallel alone; bench_gpu_scale.py): nothing
        # to shard then, but every parameter is a DTensor, kept in fp32 and gathered in
        # `param_dtype` block by block
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) \
            if param_dtype is not None else MixedPrecisionPolicy()
        dp_mesh = env.mesh["dp"]
        for i, block in enumerate(model.blocks):
            # the last block's parameters are needed right away in backward: keep them
            fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=i < len(model.blocks) - 1)
        fully_shard(model, mesh=dp_mesh, mp_policy=mp)
        return model
    if env.dp_size == 1:
        return model  # tp only: gradients of replicated parameters already agree
    from torch.nn.parallel import DistributedDataParallel

    if env.tp > 1:
        raise ConfigError("parallel.tp > 1 composes with parallel.strategy=fsdp (2-D mesh), not ddp")
    return DistributedDataParallel(model, process_group=env.mesh["dp"].get_group())


def parallelize(model: nn.Module, cfg: ParallelConfig, env: DistEnv, *, checkpointing: str = "none",
                compile: bool = False, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Apply TP -> activation checkpointing -> compile -> DDP/FSDP; returns the module to call."""
    if env.tp > 1:
        apply_tensor_parallel(model, env)
    apply_activation_checkpointing(model, checkpointing)
    if compile:
        apply_compile(model, per_block=cfg.strategy == "fsdp" and env.distributed)
    return apply_data_parallel(model, cfg, env, param_dtype)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 and TP change the model in place)."""
    return getattr(module, "module", module)


def no_sync(module: nn.Module, last_micro_step: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    import contextlib

    if not last_micro_step and hasattr(module, "no_sync"):
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(last_micro_step)
    return contextlib.nullcontext()


def grad_norm(params: Iterable[nn.Parameter]) -> Tensor:
    """The global L2 norm of the gradients, as on a single device, for plain, DTensor
    (FSDP) or mixed (tensor parallel alone) parameters.

    Sharded gradients contribute the squares of all their shards; replicated ones count
    once. Collective under several ranks.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not any(isinstance(g, DTensor) for g in grads):
        return torch.nn.utils.get_total_norm(grads, 2.0)
    # torch cannot stack norms of DTensors on different meshes (FSDP's dp mesh, the 2-D
    # dp x tp mesh of tensor-parallel weights) or plain tensors: one norm per mesh, then
    # combine the reduced values
    groups: dict[object, list[Tensor]] = {}
    for g in grads:
        groups.setdefault(g.device_mesh if isinstance(g, DTensor) else None, []).append(g)
    norms = []
    for group in groups.values():
        n = torch.nn.utils.get_total_norm(group, 2.0)
        norms.append((n.full_tensor() if isinstance(n, DTensor) else n).float())
    return torch.linalg.vector_norm(torch.stack(norms))


def barrier(env: DistEnv) -> None:
    """Wait for every rank (a no-op on one process)."""
    if env.distributed:
        dist.barrier()
