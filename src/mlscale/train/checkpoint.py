"""Run directories and checkpoints: atomic, self-describing, and safe to load.

    RUN/config.json                 the PretrainConfig (model.vocab_size filled in)
    RUN/tokenizer.json              a copy of the tokenizer the run was trained with
    RUN/metrics.jsonl               one JSON object per step and per evaluation
    RUN/checkpoints/step-XXXXXXXX/  model.safetensors, optimizer.pt, state.json, config.json
    RUN/manifest.json               written last: the run finished

A checkpoint is written into a hidden temporary directory and renamed into place, so a
crash never leaves a half-written `step-*` directory; only the newest
`train.keep_checkpoints` are kept. Loading never unpickles arbitrary objects: tensors come
from safetensors, state from JSON, and the optimizer state through
`torch.load(weights_only=True)`, which only rebuilds tensors and plain containers.
"""
from __future__ import annotations

import base64
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlscale.artifacts import atomic_write_json, fingerprint_file, read_json
from mlscale.config import diff, from_dict, to_dict
from mlscale.errors import ArtifactError, InputError, check_dir

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
PREFIX = "step-"
RUN_DAMAGED = "the run directory is damaged: train it again, or restore the file"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model under torch.compile (`_orig_mod`) and DDP-style (`module`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module  # type: ignore[assignment]
        else:
            return model


# ---------------------------------------------------------------------------------- RNG
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """Every random generator training may touch (dropout, sampling), as JSON."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ------------------------------------------------------------------------------ weights
def save_weights(model: nn.Module, path: Path) -> None:
    """Model weights as safetensors; a tied output matrix is stored once."""
    save_state(full_state(model, None)[0], model, path)


def _aliases(model: nn.Module) -> set[str]:
    """Names under which a parameter appears a second time (a tied output matrix)."""
    model = unwrap_model(model)
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return every - {n for n, _ in model.named_parameters()}


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The whole (unsharded) model and optimizer state on CPU, keyed by parameter name.

    Works alike for one process, DDP, FSDP2 and tensor-parallel DTensors (through
    torch.distributed.checkpoint's state-dict API), so a checkpoint written by any number
    of ranks is one self-contained file set that resumes on any other number. Under
    several ranks this is collective: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    inner = unwrap_model(model)
    msd = get_model_state_dict(inner, options=opts)
    osd = get_optimizer_state_dict(inner, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def save_state(model_state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Write a full model state as safetensors, leaving out tied aliases."""
    from safetensors.torch import save_file

    skip = _aliases(model)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items() if k not in skip},
              str(path), metadata={"format": "pt"})


def load_weights(model: nn.Module, path: Path, device: torch.device | str = "cpu") -> None:
    """Load safetensors weights into `model`, naming any tensor whose shape differs."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    model = unwrap_model(model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:  # truncated, overwritten or missing
        raise ArtifactError(f"{path} is not a readable safetensors file ({e}); {RUN_DAMAGED}") from None
    bad = [f"{k}: checkpoint {found[k]} vs model {expected[k]}"
           for k in found if k in expected and found[k] != expected[k]]
    unknown = [k for k in found if k not in expected]
    if bad or unknown:
        detail = "; ".join(bad[:3] + [f"unexpected tensor {k}" for k in unknown[:3]])
        raise ArtifactError(f"{path} holds a model of another shape ({detail})")
    missing = sorted(set(expected) - set(found) - _aliases(model))
    if missing:
        raise ArtifactError(f"{path} lacks tensors {missing[:3]}")
    if _is_distributed(model):
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # every rank reads the full file and keeps its shard
        set_model_state_dict(model, load_file(str(path)),
                             options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        # the alias of a tied tensor is not stored; it comes back through the tie itself
        load_model(model, str(path), strict=False, device=str(device))


def _is_distributed(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


# -------------------------------------------------------------------------- checkpoints
def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    d = Path(run_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir()
                  if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).exists())


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def checkpoint_step(path: Path) -> int:
    return int(Path(path).name[len(PREFIX):])


def write_checkpoint_dir(target: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                         state: dict[str, Any], config: dict[str, Any],
                         gathered: tuple[dict, dict | None] | None = None,
                         extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write one checkpoint to `target` atomically: fill a hidden temp dir, then rename it.

    `gathered`: the `full_state(model, optimizer)` already collected on every rank (needed
    under several ranks, where only rank 0 writes); gathered here when not given.
    `extra`: more safetensors files (file name -> tensors), e.g. a task's EMA weights.
    """
    from safetensors.torch import save_file

    model_state, optim_state = gathered if gathered is not None else full_state(model, optimizer)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_state(model_state, model, tmp / MODEL_FILE)
        for name, tensors in (extra or {}).items():
            save_file(tensors, str(tmp / name))
        if optim_state is not None:
            torch.save(optim_state, tmp / OPTIMIZER_FILE)
        atomic_write_json(tmp / CONFIG, config)
        atomic_write_json(tmp / STATE_FILE, state)  # last: its presence marks completeness
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():  # re-saving a step: swap, so a valid copy exists at all times
            old = target.parent / f".old-{target.name}-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], config: dict[str, Any], keep: int,
                    gathered: tuple[dict, dict | None] | None = None,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Checkpoint `step` under RUN/checkpoints and prune all but the newest `keep`."""
    path = write_checkpoint_dir(Path(run_dir) / CHECKPOINTS / checkpoint_name(step),
                                model, optimizer, {"step": step, **state}, config, gathered, extra)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def check_compatible(ckpt: Path, config: dict[str, Any], tokenizer_fingerprint: str | None) -> None:
    """Refuse a checkpoint made for another model shape or another tokenizer, saying which."""
    state = read_json(Path(ckpt) / STATE_FILE)
    saved = read_json(Path(ckpt) / CONFIG) if (Path(ckpt) / CONFIG).exists() else {}
    shape = diff(saved.get("model", {}), config.get("model", {}), prefix="model.")
    if shape:
        raise ArtifactError(
            f"{ckpt} was trained with another model shape ({'; '.join(shape)}); "
            "use the config it was trained with, or another --out")
    fp = state.get("tokenizer_fingerprint")
    if tokenizer_fingerprint is not None and fp is not None and fp != tokenizer_fingerprint:
        raise ArtifactError(
            f"{ckpt} was trained with another tokenizer (fingerprint {fp[:12]}, this one "
            f"{tokenizer_fingerprint[:12]}); use the token directory it was trained on")


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load weights (and the optimizer state) from `ckpt`; returns its state.json."""
    ckpt = Path(ckpt)
    load_weights(model, ckpt / MODEL_FILE, device=device)
    if optimizer is not None:
        opt_path = ckpt / OPTIMIZER_FILE
        if not opt_path.exists():
            raise ArtifactError(f"{ckpt} has no optimizer state ({OPTIMIZER_FILE}); it cannot be resumed")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        # keyed by parameter name (see full_state), so any sharding can load it
        set_optimizer_state_dict(unwrap_model(model), optimizer,
                                 torch.load(opt_path, map_location="cpu", weights_only=True),
                                 options=StateDictOptions(full_state_dict=True))
        for group in optimizer.param_groups:  # the state-dict API hands betas back as a list
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
    return read_json(ckpt / STATE_FILE)


def tokenizer_fingerprint(path: Path) -> str:
    return fingerprint_file(path)


def pick_checkpoint(run_dir: Path, step: int | None = None) -> Path:
    """The checkpoint of `step` in RUN (default: the latest); a missing one is an error
    listing the steps there are."""
    ckpts = {checkpoint_step(p): p for p in list_checkpoints(Path(run_dir))}
    if not ckpts or (step is not None and step not in ckpts):
        have = ", ".join(map(str, sorted(ckpts))) or "none"
        raise InputError(f"{run_dir} has no checkpoint{f' of step {step}' if step else ''} (it has: {have})")
    return ckpts[step if step is not None else max(ckpts)]


def run_data_dir(run_dir: Path) -> Path | None:
    """The token directory a run was trained on (recorded in its checkpoints), if known."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return None
    d = read_json(ckpt / STATE_FILE).get("data", {}).get("dir")
    return Path(d) if d else None


# ----------------------------------------------------------------------------- load_run
@dataclass
class LoadedRun:
    """A trained model ready for evaluation or generation."""

    model: nn.Module
    config: Any  # PretrainConfig
    tokenizer: Any
    step: int
    path: Path
    run_dir: Path


def read_run_config(run_dir: Path):
    """RUN/config.json as a PretrainConfig."""
    from mlscale.train.config import PretrainConfig

    run_dir = check_dir(run_dir, "run directory", "give the --out directory of `mlscale pretrain`")
    cfg_path = run_dir / CONFIG
    if not cfg_path.exists():
        raise InputError(f"{run_dir} is not a mlscale run: {CONFIG} is missing "
                         "(give the --out directory of `mlscale pretrain`)")
    return from_dict(PretrainConfig, read_json(cfg_path, "run config", RUN_DAMAGED, InputError))


def load_run(run_dir: Path, step: int | None = None, device: torch.device | str = "cpu") -> LoadedRun:
    """The model of a run (latest checkpoint, or `step`), in eval mode, with its tokenizer.

    A run that a task loads its own way (a fine-tuned run: its base with the adapter
    applied) is handed to that task (`Task.run_marker`, `Task.load_run`).
    """
    from mlscale.model.registry import family_of
    from mlscale.tokenize.tokenizer import load_tokenizer
    from mlscale.train.task import task_owning_run

    run_dir = Path(run_dir)
    owner = task_owning_run(run_dir)
    if owner is not None:
        return owner.load_run(run_dir, step=step, device=device)
    cfg = read_run_config(run_dir)
    tok_path = run_dir / TOKENIZER
    if not tok_path.exists():
        raise InputError(f"{run_dir} has no {TOKENIZER}; the run directory is incomplete")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise InputError(f"{run_dir} has no checkpoint yet under {CHECKPOINTS}/")
    if step is None:
        ckpt = ckpts[-1]
    else:
        by_step = {checkpoint_step(p): p for p in ckpts}
        if step not in by_step:
            raise InputError(f"{run_dir} has no checkpoint of step {step}; it has "
                             f"{', '.join(map(str, sorted(by_step)))}")
        ckpt = by_step[step]
    check_compatible(ckpt, to_dict(cfg), tokenizer_fingerprint(tok_path))
    tokenizer = load_tokenizer(tok_path)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise ArtifactError(f"{run_dir}: model.vocab_size={cfg.model.vocab_size} is smaller than "
                            f"its tokenizer's vocabulary ({tokenizer.vocab_size})")
    model = family_of(cfg.model).build(cfg.model)
    state = load_checkpoint(ckpt, model, device="cpu")
    model.to(device).eval()
    return LoadedRun(model=model, config=cfg, tokenizer=tokenizer, step=int(state["step"]),
                     path=ckpt, run_dir=run_dir)
