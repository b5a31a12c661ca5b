"""The pretraining loop: token shards in, a trained model and its checkpoints out.

Each piece is a small function: `build_model` (init from the seed), `wrap_model`
(tensor parallel, activation checkpointing, compile, DDP/FSDP from train/parallel.py),
`draw_batch` (this data-parallel rank's share of the global batch of an (seed, step)
generator), `forward_loss`, `reduce_mean` (across ranks), `save_checkpoint` (the full state
gathered on every rank, written by rank 0).

One optimizer step = `grad_accum` micro-batches; step k of the logs and checkpoints means
"after k optimizer updates". Batches depend only on (seed, step), so a resumed run sees
exactly the batches it would have seen and, on CPU, reproduces the same losses bit for bit.
"""
from __future__ import annotations

import contextlib
import copy
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlscale.artifacts import (StageDir, atomic_write_bytes, atomic_write_json, fingerprint_file,
                               fingerprint_obj, read_json)
from mlscale.config import to_dict
from mlscale.errors import ArtifactError, ConfigError, InputError, MlscaleError
from mlscale.model.config import ModelConfig
from mlscale.train.checkpoint import (CHECKPOINTS, CONFIG, METRICS, TOKENIZER, check_compatible,
                                      checkpoint_name, full_state, latest_checkpoint,
                                      load_checkpoint, rng_state, save_checkpoint, set_rng_state,
                                      write_checkpoint_dir)
from mlscale.train.config import PretrainConfig, TrainConfig
from mlscale.train.device import (autocast, device_name, peak_flops, resolve_device,
                                  resolve_dtype)
from mlscale.train.metrics import MetricsLog, step_line
from mlscale.train.optimizer import build_optimizer
from mlscale.train.config import ParallelConfig
from mlscale.train.parallel import DistEnv
from mlscale.train.schedule import lr_at

# Keys that may change when a run is resumed: they steer bookkeeping, the hardware or the
# length of the run, not what has been learnt so far. Everything else must match. The
# per-rank batch size may change with the number of ranks as long as the global batch
# (batch_size x data-parallel ranks) stays the same (checked on resume).
RESUMABLE_KEYS = ("train.max_steps", "train.eval_every", "train.eval_batches",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
                  "train.compile", "train.device", "train.threads", "train.activation_checkpointing",
                  "train.batch_size", "parallel.strategy", "parallel.tp", "parallel.backend")
EVAL_SEED_OFFSET = 1_000_003  # validation windows come from a generator apart from training's


class TrainingDiverged(MlscaleError):
    """The loss or the gradient norm became NaN or infinite."""


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


def setup_runtime(cfg: TrainConfig, parallel: ParallelConfig | None = None) -> Runtime:
    """The device and dtype; under torchrun, also the process group and device mesh."""
    from mlscale.train.parallel import init_distributed, rank_device

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = init_distributed(parallel or ParallelConfig(), device)
    device = rank_device(device, env)
    if device.type == "cuda":
        # TF32 matmuls: what every GPU trainer uses for the fp32 parts
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device=device, dtype=dtype, env=env)


# ---------------------------------------------------------------------------- the data
def open_token_data(data_dir: Path):
    """The token directory of `mlscale tokenize`, with clear errors for what is missing."""
    from mlscale.tokenize import TokenData

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"token directory not found: {data_dir} (make it with `mlscale tokenize`)")
    if not (data_dir / "manifest.json").exists():
        raise InputError(f"{data_dir} has no manifest.json: it is not a finished "
                         "`mlscale tokenize` output (rerun tokenize)")
    if not (data_dir / TOKENIZER).exists():
        raise InputError(f"{data_dir} has no {TOKENIZER}: the tokenizer is missing "
                         "(rerun `mlscale tokenize` into a fresh directory)")
    return TokenData(data_dir)


def draw_batch(data: Any, cfg: PretrainConfig, index: int, runtime: Runtime,
               seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Micro-batch number `index` of the run: this rank's share of a global random batch."""
    from mlscale.tokenize.batches import sample_batch

    # tensor-parallel ranks of one data-parallel group share the same batch
    x, y = sample_batch(data, cfg.train.batch_size, cfg.model.seq_len,
                        cfg.train.seed if seed is None else seed, index,
                        runtime.env.dp_rank, runtime.env.dp_size)
    if runtime.device.type == "cuda":
        return (x.pin_memory().to(runtime.device, non_blocking=True),
                y.pin_memory().to(runtime.device, non_blocking=True))
    return x.to(runtime.device), y.to(runtime.device)


class BatchPrefetcher:
    """Draws the next micro-batch while the GPU still works on this one.

    Kernels are queued asynchronously on a GPU, so gathering and copying the next batch
    (numpy indexing, pinning, host-to-device copy) can hide behind the backward pass instead
    of leaving the device idle. The batches are the same as without it: only when they
    are drawn changes. On CPU there is nothing to overlap, so it draws on demand.
    """

    def __init__(self, data: Any, cfg: PretrainConfig, runtime: Runtime):
        self.data, self.cfg, self.runtime = data, cfg, runtime
        self.enabled = runtime.device.type == "cuda"
        self._pending: tuple[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pending is not None and self._pending[0] == index:
            batch = self._pending[1]
            self._pending = None
            return batch
        return draw_batch(self.data, self.cfg, index, self.runtime)

    def prefetch(self, index: int) -> None:
        if self.enabled:
            self._pending = (index, draw_batch(self.data, self.cfg, index, self.runtime))


# --------------------------------------------------------------------------- the model
def build_model(model_cfg: ModelConfig, runtime: Runtime, seed: int) -> nn.Module:
    """A freshly initialised model on the runtime's device; the init depends only on `seed`."""
    from mlscale.model.llama import Llama

    torch.manual_seed(seed)
    return Llama(model_cfg).to(runtime.device)


def wrap_model(model: nn.Module, cfg: PretrainConfig, runtime: Runtime) -> nn.Module:
    """What the loop calls: tensor parallel -> activation checkpointing -> compile ->
    DDP/FSDP, applied from outside the model (see train/parallel.py for the order)."""
    from mlscale.train.parallel import parallelize

    param_dtype = runtime.dtype if runtime.dtype != torch.float32 else None
    return parallelize(model, cfg.parallel, runtime.env,
                       checkpointing=cfg.train.activation_checkpointing,
                       compile=cfg.train.compile, param_dtype=param_dtype)


def forward_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Mean next-token cross entropy of one micro-batch."""
    with autocast(runtime.device, runtime.dtype):
        _, loss = model(x, y)
    return loss


def reduce_mean(t: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The mean of `t` over ranks (a no-op on one process)."""
    from mlscale.train.parallel import mean_over_dp

    return mean_over_dp(t, runtime.env)


# -------------------------------------------------------------------------- one step
@dataclass
class StepResult:
    loss: float
    grad_norm: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def compute_gradients(model: nn.Module, data: Any, cfg: PretrainConfig, step: int,
                      runtime: Runtime, batches: BatchPrefetcher | None = None) -> StepResult:
    """Forward and backward over the `grad_accum` micro-batches of `step`; no update yet.

    The gradient norm is measured before clipping (and before any update), so that a
    non-finite value can stop the run with the weights still as they were.
    """
    from mlscale.train.parallel import grad_norm, no_sync

    accum = cfg.train.grad_accum
    batches = batches or BatchPrefetcher(data, cfg, runtime)
    total = torch.zeros((), device=runtime.device)
    for micro in range(accum):
        index = step * accum + micro
        x, y = batches.get(index)
        with no_sync(model, last_micro_step=micro == accum - 1):  # all-reduce once per step
            loss = forward_loss(model, x, y, runtime)
            (loss / accum).backward()
        batches.prefetch(index + 1)  # while the device runs this backward
        total += loss.detach().float()
    norm = grad_norm(model.parameters())
    mean_loss = reduce_mean(total / accum, runtime)
    both = torch.stack([mean_loss, norm.float().to(mean_loss.device)]).cpu()  # one sync
    return StepResult(loss=float(both[0]), grad_norm=float(both[1]))


def apply_update(model: nn.Module, optimizer: torch.optim.Optimizer, result: StepResult,
                 lr: float, grad_clip: float) -> None:
    """Clip the gradients to `grad_clip` (using the norm already measured) and step AdamW."""
    if grad_clip > 0 and result.grad_norm > grad_clip:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, grad_clip / (result.grad_norm + 1e-6))
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# -------------------------------------------------------------------------- evaluation
@torch.no_grad()
def estimate_val_loss(model: nn.Module, data: Any, cfg: PretrainConfig, runtime: Runtime) -> float:
    """Mean loss over `train.eval_batches` random validation batches (as nanoGPT), the
    same windows at every evaluation so the curve is not blurred by resampling."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=runtime.device)
    for i in range(cfg.train.eval_batches):
        x, y = draw_batch(data, cfg, i, runtime, seed=cfg.train.seed + EVAL_SEED_OFFSET)
        total += forward_loss(model, x, y, runtime).float()
    model.train(was_training)
    return float(reduce_mean(total / cfg.train.eval_batches, runtime))


# ------------------------------------------------------------------------ run directory
def identity_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config minus RESUMABLE_KEYS: what a run directory is tied to."""
    out = copy.deepcopy(config)
    for key in RESUMABLE_KEYS:
        section, name = key.split(".")
        out.get(section, {}).pop(name, None)
    return out


def _fill_vocab(cfg: PretrainConfig, vocab_size: int) -> PretrainConfig:
    cfg = copy.deepcopy(cfg)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab_size
    elif cfg.model.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the "
                          f"tokenizer's vocabulary ({vocab_size}); leave it 0 to take it from the tokenizer")
    return cfg


def _save_nonfinite(out_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    result: StepResult, state: dict[str, Any], config: dict[str, Any],
                    runtime: Runtime) -> Path:
    """Keep what went wrong for inspection: weights and optimizer before the update, the
    gradients that were not applied, and which batch it was (gathered on every rank,
    written by rank 0)."""
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor

    target = out_dir / f"nonfinite-{checkpoint_name(step)}"
    gathered = full_state(model, optimizer)
    grads = {name: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).detach().float().cpu()
             for name, p in model.named_parameters() if p.grad is not None}
    if runtime.is_main:
        write_checkpoint_dir(target, model, optimizer,
                             {"step": step, "loss": result.loss, "grad_norm": result.grad_norm, **state},
                             config, gathered)
        save_file({k: v.contiguous() for k, v in grads.items()}, str(target / "gradients.safetensors"))
    return target


def _check_global_batch(state: dict[str, Any], cfg: PretrainConfig, runtime: Runtime) -> None:
    """A resumed run must draw the same global batches, whatever its number of ranks."""
    saved = state.get("data", {}).get("global_batch")
    now = cfg.train.batch_size * runtime.env.dp_size
    if saved is not None and saved != now:
        per_rank = saved / runtime.env.dp_size
        hint = (f"use --train.batch_size={int(per_rank)}" if per_rank.is_integer()
                else f"use a number of data-parallel ranks that divides {saved}")
        raise ConfigError(f"the run was trained with a global batch of {saved} sequences "
                          f"(train.batch_size x data-parallel ranks), this launch gives {now}; {hint}")


def _num_params(model: nn.Module, cfg: PretrainConfig) -> int:
    """Parameters of the whole model, also when FSDP or tensor parallelism sharded them."""
    from mlscale.model.llama import Llama

    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        with torch.device("meta"):  # count the shapes without allocating
            return Llama(cfg.model).num_params()
    return model.num_params()


def pretrain(cfg: PretrainConfig, data_dir: Path, out_dir: Path, resume: bool = False,
             force: bool = False, runtime: Runtime | None = None) -> dict[str, Any]:
    """Train `cfg.model` on the token shards in `data_dir`, writing the run to `out_dir`.

    A new `out_dir` starts a run. An existing one is continued with `resume` from its latest
    checkpoint (only RESUMABLE_KEYS may differ from its config), refused without it (so a
    run is never silently overwritten), and deleted first with `force`. A finished run with
    the same config is not retrained. Returns the summary also stored in RUN/manifest.json.
    """
    from mlscale.tokenize.tokenizer import load_tokenizer

    runtime = runtime or setup_runtime(cfg.train, cfg.parallel)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    data = open_token_data(data_dir)
    tok_path = data_dir / TOKENIZER
    tok_fp = fingerprint_file(tok_path)
    tokenizer = load_tokenizer(tok_path)
    cfg = _fill_vocab(cfg, tokenizer.vocab_size)
    train_tokens, val_tokens = data.split("train"), data.split("val")
    need = cfg.model.seq_len + 1
    if len(train_tokens) < need:
        raise InputError(f"{data_dir}: the train split has {len(train_tokens)} tokens, fewer than "
                         f"model.seq_len + 1 = {need}; use more data or a shorter context")
    has_val = len(val_tokens) >= need
    config = to_dict(cfg)
    # the tokens' content (shard hashes), not the manifest file, whose timings change when
    # the same data is tokenized again
    token_manifest = read_json(data_dir / "manifest.json")
    inputs = {"tokenizer": tok_fp,
              "tokens": fingerprint_obj({k: token_manifest.get(k) for k in ("dtype", "splits")})}

    from mlscale.train.parallel import barrier

    if force and out_dir.exists() and runtime.is_main:
        shutil.rmtree(out_dir)
    barrier(runtime.env)
    existing = (out_dir / "stage.json").exists()
    barrier(runtime.env)  # every rank has looked before rank 0 creates it
    if runtime.is_main:
        StageDir.open(out_dir, "pretrain", identity_config(config), inputs)
    barrier(runtime.env)
    stage = StageDir.open(out_dir, "pretrain", identity_config(config), inputs)
    if stage.complete:
        manifest = stage.manifest()
        if manifest.get("summary", {}).get("steps", 0) >= cfg.train.max_steps:
            if runtime.is_main:
                print(f"{out_dir} is already trained to step {manifest['summary']['steps']}; nothing to do")
            return manifest["summary"]
    if existing and not resume:
        ckpt = latest_checkpoint(out_dir)
        where = f" (latest checkpoint: step {read_json(ckpt / 'state.json')['step']})" if ckpt else ""
        raise ArtifactError(f"{out_dir} already holds a pretraining run{where}; pass --resume to "
                            "continue it, --force to delete it and start over, or choose another --out")

    model = build_model(cfg.model, runtime, cfg.train.seed)
    # parallelism shards or wraps the parameters, so the optimizer is built after it
    train_model = wrap_model(model, cfg, runtime)
    optimizer = build_optimizer(model, cfg.train)
    start_step, tokens_seen, elapsed_before = 0, 0, 0.0
    last_losses: tuple[float | None, float | None] = (None, None)
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        check_compatible(ckpt, config, tok_fp)
        state = read_json(ckpt / "state.json")
        _check_global_batch(state, cfg, runtime)
        state = load_checkpoint(ckpt, model, optimizer, device=runtime.device)
        set_rng_state(state["rng"])
        start_step = int(state["step"])
        tokens_seen = int(state["tokens_seen"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        last_losses = (state.get("train_loss"), state.get("val_loss"))
        if runtime.is_main:
            print(f"resuming {out_dir} from {ckpt.name}")
    elif resume and runtime.is_main:
        print(f"no checkpoint in {out_dir}; starting from step 0")
    if runtime.is_main:
        atomic_write_json(out_dir / CONFIG, config)
        atomic_write_bytes(out_dir / TOKENIZER, tok_path.read_bytes())
    train_model.train()
    if not has_val and runtime.is_main:
        print(f"note: the val split of {data_dir} has fewer than {need} tokens; no validation loss")
    return _train(cfg, config, train_model, model, optimizer, train_tokens,
                  val_tokens if has_val else None, out_dir, stage, runtime,
                  start_step, tokens_seen, elapsed_before, tok_fp, data_dir, last_losses)


def _train(cfg: PretrainConfig, config: dict[str, Any], train_model: nn.Module, model: nn.Module,
           optimizer: torch.optim.Optimizer, train_tokens: Any, val_tokens: Any,
           out_dir: Path, stage: StageDir, runtime: Runtime, start_step: int, tokens_seen: int,
           elapsed_before: float, tok_fp: str, data_dir: Path,
           last_losses: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
    t = cfg.train
    tokens_per_step = t.batch_size * t.grad_accum * cfg.model.seq_len * runtime.env.dp_size
    flops_per_token = float(model.flops_per_token(cfg.model.seq_len))
    peak = peak_flops(runtime.device, runtime.dtype)
    if peak:
        peak *= runtime.world_size  # MFU of the whole job: every rank's device counts
    n_params = _num_params(model, cfg)
    if runtime.is_main:
        print(f"model: {n_params / 1e6:.2f}M parameters ({model.num_params(non_embedding=True) / 1e6:.2f}M "
              f"non-embedding), {flops_per_token / 1e6:.1f} MFLOPs/token; training on "
              f"{device_name(runtime.device)} ({str(runtime.dtype).removeprefix('torch.')}), "
              f"{tokens_per_step} tokens/step, steps {start_step + 1}..{t.max_steps}", flush=True)

    def state_at(step: int, train_loss: float | None, val_loss: float | None) -> dict[str, Any]:
        return {
            "tokens_seen": tokens_seen,
            "lr": lr_at(max(step - 1, 0), t),
            "schedule": {"name": t.schedule, "max_steps": t.max_steps, "warmup_steps": t.warmup_steps,
                         "lr": t.lr, "min_lr": t.min_lr, "decay_fraction": t.decay_fraction},
            "data": {"dir": str(data_dir.resolve()), "seed": t.seed, "next_batch": step * t.grad_accum,
                     "world_size": runtime.world_size, "dp_size": runtime.env.dp_size,
                     "global_batch": t.batch_size * runtime.env.dp_size},
            "rng": rng_state(),
            "tokenizer_fingerprint": tok_fp,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "elapsed_s": elapsed_before + (time.perf_counter() - started),
        }

    train_loss, val_loss = last_losses  # what the resumed checkpoint had reached
    batches = BatchPrefetcher(train_tokens, cfg, runtime)
    step_seconds: list[float] = []
    started = time.perf_counter()
    metrics_log = (MetricsLog(out_dir / METRICS, resume_step=start_step if start_step else None)
                   if runtime.is_main else contextlib.nullcontext())  # only rank 0 writes
    with metrics_log as metrics:
        for step in range(start_step, t.max_steps):
            done = step + 1
            t0 = time.perf_counter()
            lr = lr_at(step, t)
            result = compute_gradients(train_model, train_tokens, cfg, step, runtime, batches)
            if not result.finite:
                where = _save_nonfinite(out_dir, done, model, optimizer, result,
                                        state_at(step, result.loss, val_loss), config, runtime)
                raise TrainingDiverged(
                    f"step {done}: non-finite {'loss' if not math.isfinite(result.loss) else 'gradient norm'} "
                    f"(loss {result.loss}, gradient norm {result.grad_norm}) at lr {lr:.3g}; "
                    f"stopped before the update, state saved in {where}. Lower train.lr, raise "
                    "train.warmup_steps or set train.grad_clip, then --resume from the last checkpoint "
                    "or start over with --force")
            apply_update(model, optimizer, result, lr, t.grad_clip)
            # no device sync here: compute_gradients already waits for the loss each step, so
            # in steady state the wall time between steps is the step time, and the update
            # can overlap the next batch's host-side work
            dt = time.perf_counter() - t0
            tokens_seen += tokens_per_step
            train_loss = result.loss
            step_seconds.append(dt)
            recent = float(np.median(step_seconds[-20:]))
            tok_s = tokens_per_step / dt
            mfu = flops_per_token * tok_s / peak if peak else None
            if runtime.is_main:
                metrics.write({"step": done, "train_loss": train_loss, "lr": lr,
                               "grad_norm": result.grad_norm, "tokens": tokens_seen,
                               "tokens_per_s": round(tok_s, 1), "mfu": mfu,
                               "time_s": round(time.perf_counter() - started + elapsed_before, 3)})
                if done % t.log_every == 0 or done == t.max_steps:
                    print(step_line(done, t.max_steps, train_loss, lr, tok_s, mfu,
                                    recent * (t.max_steps - done), result.grad_norm), flush=True)
            last = done == t.max_steps
            if val_tokens is not None and ((t.eval_every and done % t.eval_every == 0) or last):
                val_loss = estimate_val_loss(train_model, val_tokens, cfg, runtime)
                if runtime.is_main:
                    metrics.write({"step": done, "val_loss": val_loss})
                    print(f"step {done}: val loss {val_loss:.4f}", flush=True)
            if (t.checkpoint_every and done % t.checkpoint_every == 0) or last:
                gathered = full_state(model, optimizer)  # collective: every rank takes part
                if runtime.is_main:
                    save_checkpoint(out_dir, done, model, optimizer, state_at(done, train_loss, val_loss),
                                    config, t.keep_checkpoints, gathered)
    seconds = time.perf_counter() - started
    trained = t.max_steps - start_step
    summary = {
        "steps": t.max_steps,
        "final_train_loss": train_loss,
        "final_val_loss": val_loss,
        "tokens": tokens_seen,
        "parameters": n_params,
        "flops_per_token": flops_per_token,
        "seconds": round(elapsed_before + seconds, 3),
        "tokens_per_s": round(trained * tokens_per_step / seconds, 1) if trained and seconds > 0 else None,
        "device": device_name(runtime.device),
        "data": str(data_dir.resolve()),
        "checkpoint": str(out_dir / CHECKPOINTS / checkpoint_name(t.max_steps)),
    }
    if runtime.is_main:
        stage.write_manifest({"summary": summary})
    return summary
