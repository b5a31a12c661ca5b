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
   optimizer state sharded over the data-parallel ranks), per block and then the root;
   BatchNorm layers then take their statistics over the global batch (batch_norm.py).

The device mesh is 2-D (dp, tp): ranks that share a tp group see the same batch, the
dp groups split the global batch (see `tokenize.batches.sample_batch`).

Launch with `torchrun --nproc_per_node=N -m mlscale pretrain ...` or
`mlscale pretrain --nproc N`; gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from mlscale.errors import ConfigError
from mlscale.model.registry import ModelFamily
from mlscale.runtime.dist import DistEnv
from mlscale.train.config import ParallelConfig

CHECKPOINTING = ("none", "full", "selective")


# ------------------------------------------------------------------------ the four steps
def apply_tensor_parallel(model: nn.Module, family: ModelFamily, env: DistEnv) -> None:
    """Split each block over the tp ranks by the family's plan (Megatron-LM): column-
    parallel projections compute a slice of heads / hidden width, row-parallel ones sum
    partial products with an all-reduce. Embeddings, norms and heads stay replicated."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    if not family.tp_plan:
        raise ConfigError(f"parallel.tp={env.tp}: model family '{family.name}' has no "
                          "tensor-parallel plan; use parallel.tp=1")
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    tp_mesh = env.mesh["tp"]
    for block in family.blocks(model):
        if family.tp_shard is not None:  # checks divisibility, sets per-rank head counts
            family.tp_shard(block, env.tp)
        parallelize_module(block, tp_mesh, {name: styles[style]() for name, style in family.tp_plan.items()})


def apply_activation_checkpointing(blocks: list[nn.Module], mode: str) -> None:
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
    for block in blocks:
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


def apply_compile(model: nn.Module, blocks: list[nn.Module], per_block: bool) -> None:
    """torch.compile in place (names unchanged): the whole model, or each block."""
    if per_block:
        for block in blocks:
            block.compile()
    else:
        model.compile()


def apply_data_parallel(model: nn.Module, blocks: list[nn.Module], cfg: ParallelConfig, env: DistEnv,
                        param_dtype: torch.dtype | None = None) -> nn.Module:
    """Wrap for data parallelism; returns the module the training loop calls.

    DDP returns a wrapper (its `.module` is the model); FSDP2 shards in place and returns
    the model itself.
    """
    if env.mesh is None:
        return model  # one process, no device mesh: nothing to wrap
    if env.dp_size > 1:
        from mlscale.train.batch_norm import sync_batch_norm

        sync_batch_norm(model, env.mesh["dp"].get_group())  # batch statistics of the global batch
    if cfg.strategy == "fsdp":
        # also on a dp mesh of one rank (tensor parallel alone; bench_gpu_scale.py): nothing
        # to shard then, but every parameter is a DTensor, kept in fp32 and gathered in
        # `param_dtype` block by block
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) \
            if param_dtype is not None else MixedPrecisionPolicy()
        dp_mesh = env.mesh["dp"]
        for i, block in enumerate(blocks):
            # the last block's parameters are needed right away in backward: keep them
            fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
        fully_shard(model, mesh=dp_mesh, mp_policy=mp)
        return model
    if env.dp_size == 1:
        return model  # tp only: gradients of replicated parameters already agree
    from torch.nn.parallel import DistributedDataParallel

    if env.tp > 1:
        raise ConfigError("parallel.tp > 1 composes with parallel.strategy=fsdp (2-D mesh), not ddp")
    return DistributedDataParallel(model, process_group=env.mesh["dp"].get_group())


def parallelize(model: nn.Module, family: ModelFamily, cfg: ParallelConfig, env: DistEnv, *,
                checkpointing: str = "none", compile: bool = False,
                param_dtype: torch.dtype | None = None) -> nn.Module:
    """Apply TP -> activation checkpointing -> compile -> DDP/FSDP; returns the module to call."""
    blocks = family.blocks(model)
    if env.tp > 1:
        apply_tensor_parallel(model, family, env)
    apply_activation_checkpointing(blocks, checkpointing)
    if compile:
        apply_compile(model, blocks, per_block=cfg.strategy == "fsdp" and env.distributed)
    return apply_data_parallel(model, blocks, cfg, env, param_dtype)


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


def _by_mesh(grads: list[Tensor]) -> list[list[Tensor]]:
    """Gradients grouped so that each group is all plain tensors or all DTensors of one mesh
    (FSDP's dp mesh, the 2-D dp x tp mesh of tensor-parallel weights): torch's foreach
    kernels and norms refuse to mix them."""
    from torch.distributed.tensor import DTensor

    groups: dict[object, list[Tensor]] = {}
    for g in grads:
        groups.setdefault(g.device_mesh if isinstance(g, DTensor) else None, []).append(g)
    return list(groups.values())


def grad_norm(params: Iterable[nn.Parameter]) -> Tensor:
    """The global L2 norm of the gradients, as on a single device, for plain, DTensor
    (FSDP) or mixed (tensor parallel alone) parameters.

    Sharded gradients contribute the squares of all their shards; replicated ones count
    once. Collective under several ranks.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = []
    for group in _by_mesh(grads):
        n = torch.nn.utils.get_total_norm(group, 2.0)
        norms.append((n.full_tensor() if isinstance(n, DTensor) else n).float())
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def scale_grads_(params: Iterable[nn.Parameter], factor: float) -> None:
    """Multiply every gradient by `factor` in place (gradient clipping), whatever mix of
    plain tensors and DTensors on different meshes they are."""
    grads = [p.grad for p in params if p.grad is not None]
    for group in _by_mesh(grads):
        torch._foreach_mul_(group, factor)
