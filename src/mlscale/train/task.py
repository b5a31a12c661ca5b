"""The task interface: what is learnt from a batch; the trainer (train/trainer.py) does the rest.

The trainer runs any task on any model family. Per optimizer step it asks the task for
`grad_accum` micro-batches (`batch`), their loss and metrics (`loss`) and how many units
(tokens, images) each holds (`units`); it evaluates through `evaluate`, stores the task's
own state in checkpoints (`state_dict` / `load_state_dict`) and calls `after_step` after
every update (an EMA teacher, EMA weights), and `before_update` between the gradients
and the update. Everything else — optimizer and schedule,
accumulation, clipping, the non-finite guard, logging, checkpoints with exact resume,
parallelism — is the trainer's and the same for every task.

A task registers under a name (`register_task`) and names the config dataclass of a run
with it (`config_cls`); `mlscale train --task NAME` finds it here. Tasks sit above the
trainer (they use its configs and this interface; mlscale/tasks/ holds the general ones,
mlscale/finetune/ the fine-tuning ones) and register when their module is imported (see
SHIPPED), so the trainer runs them without importing any.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mlscale.errors import ConfigError
from mlscale.model.registry import ModelFamily, family_of
from mlscale.registry import Registry
from mlscale.runtime import Runtime

# tasks that ship with mlscale: name -> module that registers it on import
SHIPPED: dict[str, str] = {"lm": "mlscale.tasks.lm", "classify": "mlscale.tasks.classify",
                           "sft": "mlscale.finetune.sft", "dpo": "mlscale.finetune.dpo",
                           "simclr": "mlscale.tasks.selfsup.simclr", "dino": "mlscale.tasks.selfsup.dino",
                           "mae": "mlscale.tasks.selfsup.mae"}


class Task(ABC):
    """One way to train. Subclasses set the class attributes and override the hooks.

    name         registry name (`--task`)
    config_cls   dataclass of a whole run's config; it has `model`, `train` and
                 `parallel` sections (read by the trainer) and whatever else the task needs
    stage        the kind recorded in RUN/stage.json
    unit         what throughput counts: "token", "image", "sample"
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    stage: ClassVar[str] = "train"
    unit: ClassVar[str] = "sample"
    needs_base: ClassVar[bool] = False  # fine-tuning: starts from a trained model (--base)
    run_marker: ClassVar[str | None] = None  # a file that marks a run this task loads itself
    data_kinds: ClassVar[tuple[str, ...]] = ()  # the `data.kind`s it reads (train/data.py)
    out_dir: Path  # the run directory, set by the trainer before it builds the model
    eval_at_start: ClassVar[bool] = False  # evaluate before the first step too

    @classmethod
    def make_config(cls, settings: dict[str, Any]) -> Any:
        """The task's config from merged settings (preset, file, overrides): unknown keys
        and bad values are errors naming the key."""
        from mlscale.config import from_dict

        return from_dict(cls.config_cls, settings)

    def __init__(self, cfg: Any, data: Path, runtime: Runtime, base: Path | None = None):
        kind = getattr(getattr(cfg, "data", None), "kind", None)
        if self.data_kinds and kind not in self.data_kinds:
            raise ConfigError(f"data.kind={kind}: task {self.name} reads {' or '.join(self.data_kinds)}")
        self.cfg, self.data_path, self.runtime, self.base_path = cfg, Path(data), runtime, base

    # -- set-up ------------------------------------------------------------------------
    def inputs(self) -> dict[str, str]:
        """Fingerprints of everything the run reads (the run directory is tied to them)."""
        return {}

    @property
    def family(self) -> ModelFamily:
        return family_of(self.cfg.model)

    def build_model(self) -> nn.Module:
        """A freshly initialised model of `cfg.model`'s family; the init depends only on
        train.seed. Fine-tuning tasks load their base here instead."""
        torch.manual_seed(self.cfg.train.seed)
        return self.family.build(self.cfg.model).to(self.runtime.device)

    def on_start(self, model: nn.Module, out_dir: Path) -> None:
        """Called once the model is built (and a checkpoint loaded), before the first step:
        files to write beside the run, references to compute."""

    # -- one step ----------------------------------------------------------------------
    @abstractmethod
    def batch(self, index: int) -> Any:
        """Micro-batch number `index` of the run (step * grad_accum + micro), this rank's
        share, on the runtime's device. Must depend only on the seed and `index`, so a
        resumed run sees exactly the batches it would have seen."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """The scalar loss to minimise and extra metrics to log (means over the batch)."""

    @abstractmethod
    def units(self, batch: Any) -> int:
        """How many `unit`s this micro-batch holds (throughput, MFU)."""

    def flops_per_unit(self, model: nn.Module) -> float:
        """Training FLOPs per unit, from the family (active parameters only)."""
        return float(self.family.flops_per_sample(self.cfg.model, model))

    def before_update(self, model: nn.Module, step: int) -> None:
        """Between the backward pass and the update of step `step` (1-based), after the
        gradient norm is measured: e.g. drop the gradients of parameters held frozen for
        a while (DINO's last layer in the first epoch)."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """After the update of step `step` (1-based): EMA weights, a teacher, a center."""

    def log_suffix(self, metrics: dict[str, float]) -> str:
        """Extra text for the one-line step log (e.g. DPO's reward margin)."""
        return ""

    # -- evaluation and state ------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics (e.g. val_loss); empty when the task has no held-out data."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state of the task itself, stored in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def tensors(self) -> dict[str, Tensor]:
        """Tensor state of the task (an EMA copy, a center), checkpointed as safetensors."""
        return {}

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what `tensors` returned."""

    def finish(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """After the last step: write the task's outputs; returns extra summary entries."""
        return {}

    @classmethod
    def evaluate_run(cls, run_dir: Path, data: Path | None = None, split: str = "val",
                     step: int | None = None, device: Any = "cpu") -> dict[str, Any] | None:
        """`mlscale evaluate RUN` for a run of this task (a task with a `run_marker`);
        None: evaluate it as a language model (the loaded run's loss and perplexity)."""
        return None

    @classmethod
    def load_run(cls, run_dir: Path, step: int | None = None, device: Any = "cpu") -> Any:
        """A finished run of this task as a `LoadedRun`, for tasks with a `run_marker`
        (train/checkpoint.py's `load_run` loads the others from their checkpoints)."""
        raise TypeError(f"task {cls.name} has no run loader of its own")


TASKS: Registry[type[Task]] = Registry("task", "task", SHIPPED)


def register_task(cls: type[Task]) -> type[Task]:
    """Add a task class under `cls.name` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return TASKS.register(cls.name, cls)


def task_names() -> list[str]:
    return TASKS.names()


def get_task(name: str) -> type[Task]:
    """The task class registered as `name`; unknown names are config errors with a hint."""
    return TASKS.get(name)


def task_owning_run(run_dir: Path) -> type[Task] | None:
    """The task whose `run_marker` file `run_dir` holds, if any."""
    for name in task_names():
        cls = get_task(name)
        if cls.run_marker and (Path(run_dir) / cls.run_marker).is_file():
            return cls
    return None
