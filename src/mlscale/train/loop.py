"""The trainer's named forms: `run_task` (any task by name) and `pretrain` (the lm task).

    pretrain(cfg, "tokens", "run")                 # = mlscale pretrain
    run_task("lm", cfg, "tokens", "run")           # = mlscale train --task lm
    run_task("sft", ft_cfg, "data.jsonl", "ft", base="run")

Both build the runtime (device, dtype, torchrun's process group), look the task up in
the registry (train/task.py) and hand it to the one loop in train/trainer.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mlscale.runtime import Runtime, setup_runtime
from mlscale.train.config import PretrainConfig
from mlscale.train.task import get_task
from mlscale.train.trainer import train


def runtime_for(cfg: Any) -> Runtime:
    """The runtime a config asks for (train.device/dtype/threads, parallel.tp/backend)."""
    parallel = getattr(cfg, "parallel", None)
    return setup_runtime(cfg.train.device, cfg.train.dtype, cfg.train.threads,
                         tp=parallel.tp if parallel is not None else 1,
                         backend=parallel.backend if parallel is not None else "auto")


def run_task(task: str, cfg: Any, data: str | Path, out_dir: str | Path, resume: bool = False,
             force: bool = False, base: str | Path | None = None,
             runtime: Runtime | None = None) -> dict[str, Any]:
    """Train task `task` with config `cfg` on `data` into `out_dir`; returns the summary
    also stored in OUT/manifest.json. `base`: the model a fine-tuning task starts from."""
    task_cls = get_task(task)
    if not isinstance(cfg, task_cls.config_cls):
        raise TypeError(f"task {task} takes a {task_cls.config_cls.__name__}, not a {type(cfg).__name__}")
    runtime = runtime or runtime_for(cfg)
    instance = task_cls(cfg, Path(data), runtime, Path(base) if base is not None else None)
    return train(instance, out_dir, resume=resume, force=force)


def pretrain(cfg: PretrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
             force: bool = False, runtime: Runtime | None = None) -> dict[str, Any]:
    """Train `cfg.model` on the token shards in `data_dir`, writing the run to `out_dir`.

    A new `out_dir` starts a run. An existing one is continued with `resume` from its latest
    checkpoint (only the resumable keys may differ from its config), refused without it (so
    a run is never silently overwritten), and deleted first with `force`. A finished run
    with the same config is not retrained.
    """
    return run_task("lm", cfg, data_dir, out_dir, resume=resume, force=force, runtime=runtime)
