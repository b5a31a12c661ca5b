"""The one training loop: any task (train/task.py) on any model family (model/registry.py).

    trainer = Trainer(task, out_dir)            # opens RUN/, builds and wraps the model
    summary = trainer.fit()                     # steps, evaluation, checkpoints, manifest

What it does, the same for every task: the model from the task (fresh or a fine-tuning
base), fused CPU kernels and parallelism applied from outside in one order (train/
parallel.py), AdamW with decay/no-decay groups, the learning-rate schedule, gradient
accumulation, one gradient norm for plain tensors and DTensors, clipping, a guard that
stops before an update with a non-finite loss or norm (and keeps that step's state),
one log line per step, metrics.jsonl (and TensorBoard / W&B when asked), evaluation,
checkpoints that resume bit for bit on any number of ranks, and RUN/manifest.json last.

One optimizer step = `grad_accum` micro-batches; step k of the logs and checkpoints
means "after k optimizer updates". Micro-batch `step * grad_accum + micro` is drawn by
the task from (seed, index) alone, so a resumed run sees exactly the batches it would
have seen and, on CPU, reproduces the same losses bit for bit.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlscale.artifacts import StageDir, atomic_write_json, read_json
from mlscale.config import resumable_keys, to_dict, without_keys
from mlscale.errors import ArtifactError, ConfigError, MlscaleError, check_out_dir
from mlscale.runtime import Runtime
from mlscale.runtime.device import device_name, peak_flops
from mlscale.runtime.dist import barrier, mean_over_dp
from mlscale.train.checkpoint import (CHECKPOINTS, CONFIG, METRICS, check_compatible, checkpoint_name,
                                      full_state, latest_checkpoint, load_checkpoint, rng_state,
                                      save_checkpoint, set_rng_state, write_checkpoint_dir)
from mlscale.train.metrics import MetricsLog, read_metrics, step_line
from mlscale.train.optimizer import build_optimizer
from mlscale.train.schedule import lr_at, wd_at
from mlscale.train.task import Task

UNIT_ABBREVIATIONS = {"token": "tok", "image": "img", "sample": "samples"}
TASK_TENSORS = "task.safetensors"  # a checkpoint's tensors of the task (EMA weights, ...)


class TrainingDiverged(MlscaleError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    metrics: dict[str, float]
    units: int

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


# -------------------------------------------------------------------------- one step
class BatchPrefetcher:
    """Draws the next micro-batch while the GPU still works on this one.

    Kernels are queued asynchronously on a GPU, so gathering and copying the next batch
    can hide behind the backward pass instead of leaving the device idle. The batches are
    the same as without it: only when they are drawn changes. On CPU there is nothing to
    overlap, so it draws on demand.
    """

    def __init__(self, task: Task):
        self.task = task
        self.enabled = task.runtime.device.type == "cuda"
        self._pending: tuple[int, Any] | None = None

    def get(self, index: int) -> Any:
        if self._pending is not None and self._pending[0] == index:
            batch, self._pending = self._pending[1], None
            return batch
        return self.task.batch(index)

    def prefetch(self, index: int) -> None:
        if self.enabled:
            self._pending = (index, self.task.batch(index))


def compute_gradients(model: nn.Module, task: Task, step: int, grad_accum: int,
                      batches: BatchPrefetcher | None = None) -> StepResult:
    """Forward and backward over the `grad_accum` micro-batches of `step`; no update yet.

    The gradient norm is measured before clipping (and before any update), so that a
    non-finite value can stop the run with the weights still as they were.
    """
    from mlscale.train.parallel import grad_norm, no_sync

    runtime = task.runtime
    batches = batches or BatchPrefetcher(task)
    total = torch.zeros((), device=runtime.device)
    sums: dict[str, float] = {}
    units = 0
    for micro in range(grad_accum):
        index = step * grad_accum + micro
        batch = batches.get(index)
        with no_sync(model, last_micro_step=micro == grad_accum - 1):  # all-reduce once per step
            loss, metrics = task.loss(model, batch)
            (loss / grad_accum).backward()
        batches.prefetch(index + 1)  # while the device runs this backward
        total += loss.detach().float()
        units += task.units(batch)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) / grad_accum
    norm = grad_norm(model.parameters())
    mean_loss = mean_over_dp(total / grad_accum, runtime.env)
    both = torch.stack([mean_loss, norm.float().to(mean_loss.device)]).cpu()  # one sync
    return StepResult(loss=float(both[0]), grad_norm=float(both[1]), metrics=sums,
                      units=units * runtime.env.dp_size)


def apply_update(model: nn.Module, optimizer: torch.optim.Optimizer, grad_norm: float,
                 lr: float, grad_clip: float, weight_decay: float | None = None) -> bool:
    """Clip the gradients to `grad_clip` (by the norm already measured) and step AdamW;
    `weight_decay` (a scheduled value) replaces the decayed groups' decay. Returns whether
    it clipped."""
    from mlscale.train.parallel import scale_grads_

    clipped = grad_clip > 0 and grad_norm > grad_clip
    if clipped:
        scale_grads_(model.parameters(), grad_clip / (grad_norm + 1e-6))
    for group in optimizer.param_groups:
        group["lr"] = lr
        if weight_decay is not None and group.get("decays", group["weight_decay"] > 0):
            group["weight_decay"] = weight_decay
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return clipped


def wrap_model(model: nn.Module, task: Task) -> nn.Module:
    """What the loop calls: the family's fused modules, then tensor parallel -> activation
    checkpointing -> compile -> DDP/FSDP (train/parallel.py), all from outside the model
    file. The fused modules choose per call (fused CPU kernels in fp32 eager on CPU,
    concatenated projections elsewhere, the model's own code for LoRA, quantised or
    tensor-parallel layers), so they are swapped in on every device."""
    from mlscale.train.parallel import parallelize

    cfg, runtime = task.cfg, task.runtime
    if task.family.fuse_cpu is not None:
        task.family.fuse_cpu(model)
    param_dtype = runtime.dtype if runtime.dtype != torch.float32 else None
    return parallelize(model, task.family, cfg.parallel, runtime.env,
                       checkpointing=cfg.train.activation_checkpointing,
                       compile=cfg.train.compile, param_dtype=param_dtype)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters, also when FSDP or tensor parallelism sharded them."""
    from torch.distributed.tensor import DTensor

    def numel(p: torch.Tensor) -> int:
        return math.prod(p.shape) if isinstance(p, DTensor) else p.numel()  # global shape

    params = list(model.parameters())
    return sum(numel(p) for p in params), sum(numel(p) for p in params if p.requires_grad)


def metric_text(results: dict[str, float]) -> str:
    """`val loss 1.6726, val reward margin 0.1234` for the evaluation lines."""
    return ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in results.items())


# ------------------------------------------------------------------------ run directory
def identity_config(cfg: Any) -> dict[str, Any]:
    """The config a run directory is tied to: all of it but the keys declared resumable."""
    return without_keys(to_dict(cfg), resumable_keys(cfg))


def check_global_batch(state: dict[str, Any], cfg: Any, runtime: Runtime) -> None:
    """A resumed run must draw the same global batches, whatever its number of ranks."""
    saved = state.get("data", {}).get("global_batch")
    now = cfg.train.batch_size * runtime.env.dp_size
    if saved is not None and saved != now:
        per_rank = saved / runtime.env.dp_size
        hint = (f"use --train.batch_size={int(per_rank)}" if per_rank.is_integer()
                else f"use a number of data-parallel ranks that divides {saved}")
        raise ConfigError(f"the run was trained with a global batch of {saved} "
                          f"(train.batch_size x data-parallel ranks), this launch gives {now}; {hint}")


def open_run(task: Task, out_dir: Path, resume: bool, force: bool) -> tuple[StageDir, bool, bool]:
    """Create or reopen RUN/ (rank 0 creates it, every rank then reads it). Returns the
    stage, whether it existed and whether it already holds a finished run of at least
    train.max_steps."""
    runtime = task.runtime
    identity, inputs = identity_config(task.cfg), task.inputs()
    check_out_dir(out_dir)  # a file there is refused, never deleted (not even with --force)
    if force and out_dir.exists() and runtime.is_main:
        shutil.rmtree(out_dir)
    barrier(runtime.env)
    existing = (out_dir / "stage.json").exists()
    barrier(runtime.env)  # every rank has looked before rank 0 creates it
    if runtime.is_main:
        StageDir.open(out_dir, task.stage, identity, inputs)
    barrier(runtime.env)
    stage = StageDir.open(out_dir, task.stage, identity, inputs)
    if stage.complete:
        done = stage.manifest().get("summary", {}).get("steps", 0)
        if done >= task.cfg.train.max_steps:
            if runtime.is_main:
                print(f"{out_dir} is already trained to step {done}; nothing to do")
            return stage, existing, True
    if existing and not resume:
        ckpt = latest_checkpoint(out_dir)
        where = f" (latest checkpoint: step {read_json(ckpt / 'state.json')['step']})" if ckpt else ""
        raise ArtifactError(f"{out_dir} already holds a {task.stage} run{where}; pass --resume to "
                            "continue it, --force to delete it and start over, or choose another --out")
    return stage, existing, False


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Runs `task` into `out_dir`: build, resume, step, evaluate, checkpoint, finish.

    A new `out_dir` starts a run. An existing one is continued with `resume` from its
    latest checkpoint (only the resumable keys of the config may differ), refused without
    it, and deleted first with `force`. A finished run with the same config is not redone.
    """

    def __init__(self, task: Task, out_dir: Path, resume: bool = False, force: bool = False):
        self.task, self.out_dir, self.runtime = task, Path(out_dir), task.runtime
        self.cfg, self.t = task.cfg, task.cfg.train
        self.config = to_dict(self.cfg)
        self.stage, existed, self.finished = open_run(task, self.out_dir, resume, force)
        if self.finished:
            return
        task.out_dir = self.out_dir
        self.model = task.build_model()
        # parallelism shards or wraps the parameters, so the optimizer is built after it
        self.train_model = wrap_model(self.model, task)
        self.optimizer = build_optimizer(self.model, self.t, task.family.no_weight_decay)
        self.start_step, self.units_seen, self.elapsed_before = 0, 0, 0.0
        self.last: dict[str, Any] = {}
        self._resume(resume, existed)
        if self.runtime.is_main:
            atomic_write_json(self.out_dir / CONFIG, self.config)
        task.on_start(self.model, self.out_dir)
        self.train_model.train()

    def _resume(self, resume: bool, existed: bool) -> None:
        ckpt = latest_checkpoint(self.out_dir) if resume else None
        if ckpt is None:
            if resume and existed and self.runtime.is_main:
                print(f"no checkpoint in {self.out_dir}; starting from step 0")
            return
        check_compatible(ckpt, self.config, self.task.inputs().get("tokenizer"))
        check_global_batch(read_json(ckpt / "state.json"), self.cfg, self.runtime)
        state = load_checkpoint(ckpt, self.model, self.optimizer, device=self.runtime.device)
        set_rng_state(state["rng"])
        self.task.load_state_dict(state.get("task", {}))
        self.task.load_tensors(_load_task_tensors(ckpt))
        self.start_step = int(state["step"])
        self.units_seen = int(state.get(f"{self.task.unit}s_seen", 0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.last = dict(state.get("last", {}))
        if self.runtime.is_main:
            print(f"resuming {self.out_dir} from {ckpt.name}")

    # -- bookkeeping ---------------------------------------------------------------------
    def state_at(self, step: int) -> dict[str, Any]:
        t, env = self.t, self.runtime.env
        return {
            f"{self.task.unit}s_seen": self.units_seen,
            "lr": lr_at(max(step - 1, 0), t),
            "schedule": {"name": t.schedule, "max_steps": t.max_steps, "warmup_steps": t.warmup_steps,
                         "lr": t.lr, "min_lr": t.min_lr, "decay_fraction": t.decay_fraction},
            "data": {"dir": str(self.task.data_path.resolve()), "seed": t.seed,
                     "next_batch": step * t.grad_accum, "world_size": env.world_size,
                     "dp_size": env.dp_size, "global_batch": t.batch_size * env.dp_size},
            "rng": rng_state(),
            "task": self.task.state_dict(),
            "tokenizer_fingerprint": self.task.inputs().get("tokenizer"),
            "train_loss": self.last.get("train_loss"),
            "val_loss": self.last.get("val_loss"),
            "last": self.last,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self.started),
        }

    def checkpoint(self, step: int) -> None:
        gathered = full_state(self.model, self.optimizer)  # collective: every rank takes part
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.task.tensors().items()}
        if self.runtime.is_main:
            save_checkpoint(self.out_dir, step, self.model, self.optimizer, self.state_at(step),
                            self.config, self.t.keep_checkpoints, gathered,
                            extra={TASK_TENSORS: tensors} if tensors else None)

    def diverged(self, step: int, result: StepResult, lr: float) -> TrainingDiverged:
        """Keep what went wrong for inspection (weights and optimizer before the update,
        the gradients that were not applied, which batch) and say what to do."""
        from safetensors.torch import save_file
        from torch.distributed.tensor import DTensor

        target = self.out_dir / f"nonfinite-{checkpoint_name(step)}"
        gathered = full_state(self.model, self.optimizer)
        grads = {n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).detach().float().cpu()
                 for n, p in self.model.named_parameters() if p.grad is not None}
        if self.runtime.is_main:
            state = {"step": step, "loss": result.loss, "grad_norm": result.grad_norm,
                     **self.state_at(step - 1)}
            write_checkpoint_dir(target, self.model, self.optimizer, state, self.config, gathered)
            save_file({k: v.contiguous() for k, v in grads.items()}, str(target / "gradients.safetensors"))
        what = "loss" if not math.isfinite(result.loss) else "gradient norm"
        return TrainingDiverged(
            f"step {step}: non-finite {what} (loss {result.loss}, gradient norm {result.grad_norm}) "
            f"at lr {lr:.3g}; stopped before the update, state saved in {target}. Lower train.lr, "
            "raise train.warmup_steps or set train.grad_clip, then --resume from the last "
            "checkpoint or start over with --force")

    # -- the loop ------------------------------------------------------------------------
    def evaluate(self, step: int, metrics: Any) -> None:
        results = self.task.evaluate(self.train_model)
        if not results:
            return
        self.last.update(results)
        if self.runtime.is_main:
            metrics.write({"step": step, **results})
            print(f"step {step}: {metric_text(results)}", flush=True)

    def initial_metrics(self) -> dict[str, float]:
        """Held-out metrics before training (fine-tuning reports them): computed on a
        fresh run, read back from metrics.jsonl on a resumed one."""
        if self.start_step == 0:
            return self.task.evaluate(self.train_model)
        path = self.out_dir / METRICS
        first = next((r for r in read_metrics(path) if r.get("step") == 0), {}) if path.exists() else {}
        return {k: v for k, v in first.items() if k != "step"}

    def fit(self) -> dict[str, Any]:
        """Train from the start (or the resumed step) to train.max_steps; returns the
        summary also stored in RUN/manifest.json."""
        if self.finished:
            return self.stage.manifest()["summary"]
        from mlscale.train.tracking import Tracker

        t, runtime, task = self.t, self.runtime, self.task
        self.flops_per_unit = task.flops_per_unit(self.model)
        peak = peak_flops(runtime.device, runtime.dtype)
        self.peak = peak * runtime.world_size if peak else None  # MFU of the whole job
        self.n_params, self.n_trainable = count_parameters(self.model)
        self._print_header()
        self.started = time.perf_counter()
        self.step_seconds: list[float] = []
        self.batches = BatchPrefetcher(task)
        initial = self.initial_metrics() if task.eval_at_start else {}
        main = runtime.is_main
        resume_step = self.start_step if self.start_step else None
        with (MetricsLog(self.out_dir / METRICS, resume_step=resume_step) if main
              else contextlib.nullcontext()) as metrics, \
             Tracker(self.out_dir, t.log_to, self.config, self.out_dir.name, resume_step, main) as tracker:
            if initial and main and not self.start_step:
                metrics.write({"step": 0, **initial})
                print(f"step 0: {metric_text(initial)}", flush=True)
            for step in range(self.start_step, t.max_steps):
                record = self.train_step(step)
                if main:
                    metrics.write(record)
                    tracker.log(record["step"], record)
                done, last = step + 1, step + 1 == t.max_steps
                if (t.eval_every and done % t.eval_every == 0) or last:
                    self.evaluate(done, metrics)
                    tracker.log(done, {k: v for k, v in self.last.items() if k.startswith("val")})
                if (t.checkpoint_every and done % t.checkpoint_every == 0) or last:
                    self.checkpoint(done)
        return self._finish(initial)

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimizer step; returns its metrics.jsonl record (and prints its line)."""
        t, task = self.t, self.task
        done = step + 1
        t0 = time.perf_counter()
        lr = lr_at(step, t)
        result = compute_gradients(self.train_model, task, step, t.grad_accum, self.batches)
        if not result.finite:
            raise self.diverged(done, result, lr)
        task.before_update(self.model, done)
        wd = wd_at(step, t) if t.weight_decay_end >= 0 else None
        clipped = apply_update(self.model, self.optimizer, result.grad_norm, lr, t.grad_clip, wd)
        task.after_step(self.model, done)
        # no device sync here: compute_gradients already waits for the loss each step, so
        # in steady state the wall time between steps is the step time
        dt = time.perf_counter() - t0
        self.units_seen += result.units
        self.last.update(train_loss=result.loss, **result.metrics)
        self.step_seconds.append(dt)
        rate = result.units / dt
        mfu = self.flops_per_unit * rate / self.peak if self.peak else None
        unit = task.unit
        record = {"step": done, "train_loss": result.loss, **result.metrics, "lr": lr,
                  "grad_norm": result.grad_norm, "clipped": clipped, f"{unit}s": self.units_seen,
                  f"{unit}s_per_s": round(rate, 1), "mfu": mfu,
                  "time_s": round(time.perf_counter() - self.started + self.elapsed_before, 3)}
        if self.runtime.is_main and (done % t.log_every == 0 or done == t.max_steps):
            eta = float(np.median(self.step_seconds[-20:])) * (t.max_steps - done)
            line = step_line(done, t.max_steps, result.loss, lr, rate, mfu, eta, result.grad_norm,
                             unit=UNIT_ABBREVIATIONS.get(unit, unit))
            print(line + task.log_suffix(result.metrics), flush=True)
        return record

    def _print_header(self) -> None:
        if not self.runtime.is_main:
            return
        t, task = self.t, self.task
        trainable = ("" if self.n_trainable == self.n_params else
                     f", {self.n_trainable / 1e6:.3f}M trainable "
                     f"({100 * self.n_trainable / max(self.n_params, 1):.2f}%)")
        print(f"{task.name} on {task.family.name}: {self.n_params / 1e6:.2f}M parameters{trainable}, "
              f"{self.flops_per_unit / 1e6:.1f} MFLOPs/{task.unit}; training on "
              f"{device_name(self.runtime.device)} ({str(self.runtime.dtype).removeprefix('torch.')}), "
              f"{t.batch_size * t.grad_accum * self.runtime.env.dp_size} samples/step, "
              f"steps {self.start_step + 1}..{t.max_steps}", flush=True)

    def _finish(self, initial: dict[str, float]) -> dict[str, Any]:
        t, task, unit = self.t, self.task, self.task.unit
        seconds = time.perf_counter() - self.started
        trained = t.max_steps - self.start_step
        summary: dict[str, Any] = {
            "steps": t.max_steps,
            "final_train_loss": self.last.get("train_loss"),
            "final_val_loss": self.last.get("val_loss"),
            f"{unit}s": self.units_seen,
            "parameters": self.n_params,
            "trainable_parameters": self.n_trainable,
            f"flops_per_{unit}": self.flops_per_unit,
            "seconds": round(self.elapsed_before + seconds, 3),
            f"{unit}s_per_s": (round(self.units_seen / (self.elapsed_before + seconds), 1)
                               if trained and seconds > 0 else None),
            "step_seconds_median": round(float(np.median(self.step_seconds)), 4) if self.step_seconds else None,
            "device": device_name(self.runtime.device),
            "data": str(self.task.data_path.resolve()),
            "checkpoint": str(self.out_dir / CHECKPOINTS / checkpoint_name(t.max_steps)),
            **{f"initial_{k}": v for k, v in initial.items()},
            **{f"final_{k}": v for k, v in self.last.items() if k not in ("train_loss", "val_loss")},
        }
        if self.runtime.device.type == "cuda":
            summary["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(self.runtime.device))
        extra = task.finish(self.model, self.out_dir)  # may gather: every rank calls it
        summary.update(extra)
        if self.runtime.is_main:
            self.stage.write_manifest({"summary": summary})
        return summary


def train(task: Task, out_dir: str | Path, resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Run `task` into `out_dir` (see Trainer); returns the run's summary."""
    return Trainer(task, Path(out_dir), resume=resume, force=force).fit()


# ------------------------------------------------------------------------ task tensors


def _load_task_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = ckpt / TASK_TENSORS
    return load_file(str(path)) if path.exists() else {}
