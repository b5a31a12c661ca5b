"""The fine-tuning loop: a base model and instruction (or preference) data in, a tuned run out.

    FT/stage.json                 how the run was started (config + input fingerprints)
    FT/config.json                the FinetuneConfig
    FT/finetune.json              method, base (path, fingerprints), model shape, template
    FT/tokenizer.json             the base's tokenizer
    FT/adapter/                   lora/qlora: adapter_model.safetensors, adapter_config.json
                                  (PEFT layout) and template.json
    FT/model.safetensors          full: all the weights
    FT/metrics.jsonl              one JSON object per step and per evaluation
    FT/checkpoint/                trainable weights, optimizer and step, to resume
    FT/ref_logps.safetensors      DPO: the reference log-probabilities, computed once
    FT/manifest.json              written last: the run finished

Rerunning with the same settings resumes from FT/checkpoint (or does nothing when the
run finished); other settings on the same FT are refused unless --force.
The optimizer, schedule, device handling and log line are pretraining's.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mlscale.artifacts import (StageDir, atomic_path, atomic_write_bytes, atomic_write_json,
                               fingerprint_file, fingerprint_obj, read_json)
from mlscale.config import to_dict
from mlscale.errors import ConfigError, InputError
from mlscale.finetune.base import Base, load_base
from mlscale.finetune.config import RUN_INFO, FinetuneConfig
from mlscale.finetune.data import (PackedRows, PreferenceRows, TemplateRenderer,
                                   epoch_order, pack_examples, read_examples, read_preferences,
                                   split_holdout, tokenize_preferences)
from mlscale.finetune.dpo import (REF_CACHE, dpo_loss, evaluate_dpo, load_or_compute_ref, pair_logps,
                                  reference_logps)
from mlscale.finetune.sft import evaluate_sft, sft_loss
from mlscale.model.lora import apply_lora, count_parameters, disable_adapters, save_adapter
from mlscale.model.quant import quantize_linears
from mlscale.train.checkpoint import METRICS, TOKENIZER, rng_state, save_weights, set_rng_state
from mlscale.train.device import autocast, device_name, synchronize
from mlscale.train.loop import Runtime, StepResult, TrainingDiverged, apply_update, setup_runtime
from mlscale.train.metrics import MetricsLog, read_metrics, step_line
from mlscale.train.optimizer import build_optimizer
from mlscale.train.schedule import lr_at

ADAPTER_DIR = "adapter"
TEMPLATE_FILE = "template.json"
FULL_WEIGHTS = "model.safetensors"
CHECKPOINT_DIR = "checkpoint"
# settings that may differ when an interrupted run is resumed: where and how verbosely it
# runs, not what it learns
RESUMABLE_KEYS = ("device", "log_every", "eval_every", "eval_batches", "checkpoint_every",
                  "keep_checkpoints", "compile")


def identity_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config an FT directory is tied to: all of it but the RESUMABLE_KEYS of train."""
    return {**config, "train": {k: v for k, v in config["train"].items() if k not in RESUMABLE_KEYS}}


# ---------------------------------------------------------------------------- the model
def prepare_model(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Make the parameters `cfg.method` trains trainable: all (full) or LoRA adapters on a
    frozen base, quantised to NF4 first for qlora (every projection of every block; the
    embedding and output head stay in full precision, as in QLoRA)."""
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "qlora":
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
        quantize_linears(model, names)
    torch.manual_seed(cfg.train.seed)  # the adapters' A init
    apply_lora(model, cfg.lora)
    return model


# ----------------------------------------------------------------------------- the data
@dataclass
class Datasets:
    train: PackedRows | PreferenceRows
    val: PackedRows | PreferenceRows | None
    renderer: TemplateRenderer
    seq_len: int
    counts: dict[str, int]


def load_datasets(cfg: FinetuneConfig, data_path: Path, base: Base) -> Datasets:
    """Read, split, render and pack (SFT) or pair up (DPO) the training data."""
    seq_len = cfg.data.seq_len or base.model_config.seq_len
    if seq_len > base.model_config.seq_len:
        raise ConfigError(f"data.seq_len={seq_len} exceeds the base model's context "
                          f"({base.model_config.seq_len})")
    renderer = TemplateRenderer(cfg.template, base.tokenizer)
    pad = base.tokenizer.pad_id
    val_path = Path(cfg.data.val) if cfg.data.val else None
    if cfg.objective == "dpo":
        train_items = read_preferences(data_path, cfg.data.format)
        val_items = read_preferences(val_path, cfg.data.format) if val_path else None
    else:
        train_items = read_examples(data_path, cfg.data.format, cfg.template)
        val_items = read_examples(val_path, cfg.data.format, cfg.template) if val_path else None
    if val_items is None:
        train_items, val_items = split_holdout(train_items, cfg.data.val_fraction, cfg.train.seed)
    counts = {"train_examples": len(train_items), "val_examples": len(val_items)}
    if cfg.objective == "dpo":
        train = tokenize_preferences(train_items, renderer, seq_len, pad)
        val = tokenize_preferences(val_items, renderer, seq_len, pad) if val_items else None
        counts["train_dropped"] = train.n_dropped
    else:
        train = pack_examples([renderer.render(e) for e in train_items], seq_len, pad, cfg.data.pack)
        val = pack_examples([renderer.render(e) for e in val_items], seq_len, pad,
                            cfg.data.pack) if val_items else None
        counts.update(train_rows=len(train), train_target_tokens=train.target_tokens,
                      train_truncated=train.n_truncated, train_dropped=train.n_dropped)
        if train.n_dropped:
            print(f"warning: {train.n_dropped} examples lost their whole answer to data.seq_len="
                  f"{seq_len} and were skipped (e.g. {', '.join(train.sources_dropped[:3])})")
    return Datasets(train, val, renderer, seq_len, counts)


def _grad_norm(params: list[torch.Tensor]) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


# ------------------------------------------------------------------------- checkpointing
def save_trainable(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                   target: Path) -> None:
    """Trainable weights + optimizer + state.json into `target`, atomically (temp dir + rename)."""
    from safetensors.torch import save_file

    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    atomic_write_json(tmp / "state.json", state)
    old = target.parent / f".old-{target.name}-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def load_trainable(model: nn.Module, optimizer: torch.optim.Optimizer, source: Path,
                   device: torch.device) -> dict[str, Any]:
    from safetensors.torch import load_file

    weights = load_file(str(source / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in weights.items():
            params[name].copy_(t)
    optimizer.load_state_dict(torch.load(source / "optimizer.pt", map_location=device, weights_only=True))
    return read_json(source / "state.json")


# --------------------------------------------------------------------------------- finetune
def finetune(cfg: FinetuneConfig, base_path: str | Path, data_path: str | Path, out_dir: str | Path,
             force: bool = False, runtime: Runtime | None = None) -> dict[str, Any]:
    """Fine-tune the model at `base_path` on `data_path`, writing the run to `out_dir`.

    Returns the summary also stored in FT/manifest.json.
    """
    base_path, data_path, out_dir = Path(base_path), Path(data_path), Path(out_dir)
    if not data_path.is_file():
        raise InputError(f"data file not found: {data_path}")
    if cfg.data.val and not Path(cfg.data.val).is_file():
        raise InputError(f"data.val: file not found: {cfg.data.val}")
    runtime = runtime or setup_runtime(cfg.train)
    base = load_base(base_path)
    data = load_datasets(cfg, data_path, base)
    config = to_dict(cfg)
    inputs = {"data": fingerprint_file(data_path), **{f"base/{k}": v for k, v in base.fingerprints.items()}}
    if cfg.data.val:
        inputs["val"] = fingerprint_file(cfg.data.val)
    stage = StageDir.open(out_dir, "finetune", identity_config(config), inputs, force=force)
    if stage.complete:
        print(f"{out_dir} is already fine-tuned with these settings; nothing to do")
        return stage.manifest()["summary"]

    model = prepare_model(base.model, cfg).to(runtime.device)
    model.train()
    # the training steps may run compiled; evaluation, references and saving use `model`
    step_model = torch.compile(model) if cfg.train.compile else model
    trainable, total = count_parameters(model)
    optimizer = build_optimizer(model, cfg.train)
    t = cfg.train
    print(f"finetune ({cfg.method}, {cfg.objective}) {base.kind} base {base.path}: {total / 1e6:.2f}M "
          f"parameters, {trainable / 1e6:.3f}M trainable ({100 * trainable / total:.2f}%); "
          f"{data.counts['train_examples']} train / {data.counts['val_examples']} val examples, "
          f"seq_len {data.seq_len}, on {device_name(runtime.device)} "
          f"({str(runtime.dtype).removeprefix('torch.')})", flush=True)

    # DPO references first: the model is still exactly the base (a fresh adapter adds 0)
    ref_train = ref_val = None
    if cfg.objective == "dpo":
        ref_fp = fingerprint_obj({"inputs": inputs, "template": config["template"],
                                  "seq_len": data.seq_len, "method": cfg.method})

        def refs(rows: PreferenceRows):
            with disable_adapters(model):
                return reference_logps(model, rows, t.batch_size, runtime.device, runtime.dtype)

        ref_train = load_or_compute_ref(out_dir / REF_CACHE, "train", ref_fp, lambda: refs(data.train))
        if data.val is not None:
            ref_val = load_or_compute_ref(out_dir / REF_CACHE, "val", ref_fp, lambda: refs(data.val))

    start_step, elapsed_before = 0, 0.0
    ckpt = out_dir / CHECKPOINT_DIR
    if (ckpt / "state.json").exists():
        state = load_trainable(model, optimizer, ckpt, runtime.device)
        set_rng_state(state["rng"])
        start_step, elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        print(f"resuming {out_dir} from step {start_step}")

    atomic_write_json(out_dir / "config.json", config)
    atomic_write_bytes(out_dir / TOKENIZER, Path(base.tokenizer.path).read_bytes())
    params = [p for p in model.parameters() if p.requires_grad]
    first_val = None
    if data.val is not None and start_step == 0:
        first_val = _evaluate(model, cfg, data, ref_val, runtime)
        print("step 0: " + ", ".join(f"{k} {v:.4f}" for k, v in first_val.items()), flush=True)
    elif data.val is not None and (out_dir / METRICS).exists():  # resumed: the step-0 figures
        first_val = next((r for r in read_metrics(out_dir / METRICS) if r.get("step") == 0), None)
        first_val = {k: v for k, v in (first_val or {}).items() if k != "step"} or None

    last_train: dict[str, float] = {}
    last_val = first_val
    step_times: list[float] = []
    started = time.perf_counter()
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    with MetricsLog(out_dir / METRICS, resume_step=start_step if start_step else None) as metrics:
        if first_val and not start_step:
            metrics.write({"step": 0, **first_val})
        for step in range(start_step, t.max_steps):
            done = step + 1
            t0 = time.perf_counter()
            lr = lr_at(step, t)
            stats: dict[str, float] = {}
            losses, tokens = [], 0
            for micro in range(t.grad_accum):
                index = step * t.grad_accum + micro
                if cfg.objective == "dpo":
                    pairs = epoch_order(len(data.train), t.batch_size, t.seed, index)
                    batch = data.train.batch(pairs, runtime.device)
                    with autocast(runtime.device, runtime.dtype):
                        pc, pr = pair_logps(step_model, batch)
                    idx = torch.from_numpy(pairs)
                    loss, s = dpo_loss(pc.float(), pr.float(), ref_train[0][idx].to(runtime.device),
                                       ref_train[1][idx].to(runtime.device), cfg.dpo.beta)
                    for k, v in s.items():
                        stats[k] = stats.get(k, 0.0) + v / t.grad_accum
                    tokens += int((batch["x"] != data.train.pad_id).sum())
                else:
                    rows = epoch_order(len(data.train), t.batch_size, t.seed, index)
                    loss, n = sft_loss(step_model, data.train.batch(rows, runtime.device), runtime)
                    tokens += n
                (loss / t.grad_accum).backward()
                losses.append(float(loss.detach()))
            train_loss = float(np.mean(losses))
            norm = _grad_norm(params)
            if not (math.isfinite(train_loss) and math.isfinite(norm)):
                raise TrainingDiverged(f"step {done}: non-finite loss {train_loss} / gradient norm {norm} "
                                       f"at lr {lr:.3g}; lower train.lr or raise train.warmup_steps, "
                                       "then rerun with --force")
            apply_update(model, optimizer, StepResult(train_loss, norm), lr, t.grad_clip)
            synchronize(runtime.device)
            dt = time.perf_counter() - t0
            step_times.append(dt)
            eta = float(np.median(step_times[-20:])) * (t.max_steps - done)
            last_train = {"train_loss": train_loss, **stats}
            metrics.write({"step": done, **last_train, "lr": lr, "grad_norm": norm,
                           "tokens_per_s": round(tokens / dt, 1),
                           "time_s": round(time.perf_counter() - started + elapsed_before, 3)})
            if done % t.log_every == 0 or done == t.max_steps:
                line = step_line(done, t.max_steps, train_loss, lr, tokens / dt, None, eta, norm)
                if cfg.objective == "dpo":
                    line += (f" | margin {stats['reward_margin']:.3f}"
                             f" | acc {stats['reward_accuracy']:.2f}")
                print(line, flush=True)
            last = done == t.max_steps
            if data.val is not None and ((t.eval_every and done % t.eval_every == 0) or last):
                last_val = _evaluate(model, cfg, data, ref_val, runtime)
                metrics.write({"step": done, **last_val})
                print(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_val.items()), flush=True)
            if (t.checkpoint_every and done % t.checkpoint_every == 0) and not last:
                save_trainable(model, optimizer, {"step": done, "rng": rng_state(),
                                                  "elapsed_s": elapsed_before + time.perf_counter() - started},
                               ckpt)
    seconds = elapsed_before + time.perf_counter() - started
    write_outputs(model, cfg, base, data, out_dir)
    summary = {
        "method": cfg.method, "objective": cfg.objective, "steps": t.max_steps,
        "trainable_parameters": trainable, "total_parameters": total,
        "trainable_share": trainable / total,
        **{f"initial_{k}": v for k, v in (first_val or {}).items()},
        **{f"final_{k}": v for k, v in last_train.items()},
        **{f"final_{k}": v for k, v in (last_val or {}).items()},
        **data.counts, "seq_len": data.seq_len,
        "seconds": round(seconds, 3),
        "step_seconds_median": round(float(np.median(step_times)), 4) if step_times else None,
        "device": device_name(runtime.device),
    }
    if runtime.device.type == "cuda":
        summary["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(runtime.device))
    stage.write_manifest({"summary": summary})
    shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete: the outputs replace it
    return summary


def _evaluate(model: nn.Module, cfg: FinetuneConfig, data: Datasets, ref_val, runtime: Runtime) -> dict[str, float]:
    if cfg.objective == "dpo":
        return evaluate_dpo(model, data.val, ref_val, cfg.dpo.beta, cfg.train.batch_size, runtime)
    return {"val_loss": evaluate_sft(model, data.val, cfg.train.batch_size, cfg.train.eval_batches, runtime)}


def write_outputs(model: nn.Module, cfg: FinetuneConfig, base: Base, data: Datasets, out_dir: Path) -> None:
    """The adapter (lora/qlora) or the weights (full), and FT/finetune.json describing them."""
    template = to_dict(cfg.template)
    info: dict[str, Any] = {"method": cfg.method, "objective": cfg.objective, "base": base.describe(),
                            "model": to_dict(base.model_config), "template": template,
                            "seq_len": data.seq_len, "steps": cfg.train.max_steps}
    if cfg.method == "full":
        with atomic_path(out_dir / FULL_WEIGHTS) as tmp:
            save_weights(model, tmp)
        info["weights"] = FULL_WEIGHTS
    else:
        adapter = out_dir / ADAPTER_DIR
        save_adapter(model, cfg.lora, adapter, base_model_name_or_path=str(base.path.resolve()))
        atomic_write_json(adapter / TEMPLATE_FILE, template)
        info["adapter"] = ADAPTER_DIR
    atomic_write_json(out_dir / RUN_INFO, info)
