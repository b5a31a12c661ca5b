"""Configuration of a pretraining run: the model's shape and how to train it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlscale.config import option
from mlscale.errors import ConfigError
from mlscale.model.llama.config import LlamaConfig
from mlscale.tokenize.split import SPLITS
from mlscale.train.data import data_config_class, register_data_kind

SCHEDULES = ("cosine", "wsd", "linear", "constant")


def model_config_class(family: str) -> type:
    """The config dataclass of model family `family` (what `model.family` selects)."""
    from mlscale.model.registry import get_family

    return get_family(family).config_cls

STRATEGIES = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    batch_size: int = option(12, "sequences per micro-batch (per rank)", min=1, resumable=True)
    grad_accum: int = option(1, "micro-batches accumulated into one optimizer step", min=1)
    max_steps: int = option(2000, "optimizer steps", min=1, resumable=True)
    lr: float = option(1e-3, "peak learning rate", min=0.0)
    min_lr: float = option(1e-4, "learning rate at the end of the decay", min=0.0)
    warmup_steps: int = option(100, "linear warmup steps from ~0 to train.lr", min=0)
    schedule: str = option("cosine", "after warmup: cosine to min_lr; wsd (warmup-stable-decay: "
                           "constant, then linear decay over the last decay_fraction of steps); "
                           "linear to min_lr; constant", choices=SCHEDULES)
    decay_fraction: float = option(0.2, "wsd: fraction of max_steps spent decaying to min_lr",
                                   min=0.0, max=1.0)
    weight_decay: float = option(0.1, "AdamW decoupled weight decay on 2-D weights (biases and "
                                 "norm gains are not decayed)", min=0.0)
    weight_decay_end: float = option(-1.0, "weight decay at the last step, reached by half a cosine "
                                     "from train.weight_decay (DINO: 0.04 -> 0.4); -1 = constant")
    beta1: float = option(0.9, "AdamW beta1", min=0.0, max=1.0)
    beta2: float = option(0.95, "AdamW beta2", min=0.0, max=1.0)
    eps: float = option(1e-8, "AdamW epsilon", min=0.0)
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 = no clipping", min=0.0)
    eval_every: int = option(250, "evaluate on the validation split every N steps (and at the "
                             "end); 0 = only at the end", min=0, resumable=True)
    eval_batches: int = option(20, "random validation batches per evaluation", min=1, resumable=True)
    checkpoint_every: int = option(500, "checkpoint every N steps (and at the end); 0 = only at "
                                   "the end", min=0, resumable=True)
    keep_checkpoints: int = option(2, "how many of the latest checkpoints to keep", min=1, resumable=True)
    seed: int = option(1337, "seed of the initialisation and of the batch order")
    device: str = option("auto", "auto picks cuda, then mps, then cpu",
                         choices=("auto", "cpu", "cuda", "mps"), resumable=True)
    dtype: str = option("auto", "auto = fp32 on CPU, bf16 autocast on a GPU that supports it",
                        choices=("auto", "fp32", "bf16"))
    compile: bool = option(False, "torch.compile the model (worth it on GPUs)", resumable=True)
    threads: int = option(0, "CPU threads for torch's kernels; 0 = torch's default (all cores). "
                          "Small models train faster on 1 thread, and far faster on a busy "
                          "machine", min=0, resumable=True)
    activation_checkpointing: str = option(
        "none", "recompute activations in backward to save memory, per block: full (the whole "
        "block) or selective (keep matmul/attention outputs, recompute the cheap ops)",
        choices=("none", "full", "selective"), resumable=True)
    log_every: int = option(1, "print one line every N steps (metrics.jsonl gets every step)",
                            min=1, resumable=True)
    log_to: list[str] = option([], "experiment trackers besides metrics.jsonl: tensorboard "
                               "(RUN/tensorboard/), wandb (offline, RUN/wandb/)",
                               choices=("tensorboard", "wandb"), resumable=True)

    def validate(self) -> None:
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr={self.min_lr} is above train.lr={self.lr}")
        if self.warmup_steps >= self.max_steps and self.schedule != "constant":
            raise ConfigError(f"train.warmup_steps={self.warmup_steps} must be below "
                              f"train.max_steps={self.max_steps}")


@dataclass
class ParallelConfig:
    strategy: str = option("ddp", "data parallelism over the ranks: ddp (replicated model, "
                           "all-reduced gradients) or fsdp (FSDP2 / ZeRO-3 sharding of "
                           "parameters, gradients and optimizer state)", choices=STRATEGIES,
                           resumable=True)
    tp: int = option(1, "tensor-parallel degree (Megatron column/row splits of attention and "
                     "MLP); ranks = dp x tp", min=1, resumable=True)
    backend: str = option("auto", "process-group backend: auto = nccl on CUDA, gloo on CPU",
                          choices=("auto", "gloo", "nccl"), resumable=True)


@dataclass
class TokenDataConfig:
    """`data` when data.kind = tokens: a token directory of `mlscale tokenize`."""

    kind: str = option("tokens", "what --data holds (tokens: a token directory of `mlscale tokenize`)")
    train_split: str = option("train", "split of the token directory to train on", choices=SPLITS)
    val_split: str = option("val", "split to evaluate on (no validation when it is shorter than one "
                            "window of model.seq_len + 1 tokens)", choices=SPLITS)


register_data_kind("tokens", TokenDataConfig)


@dataclass
class ImageDataConfig:
    """`data` when data.kind = images: an image directory of `mlscale images`."""

    kind: str = option("images", "what --data holds (images: an image directory of `mlscale images`)")
    train_split: str = option("train", "split to train on", choices=SPLITS)
    val_split: str = option("val", "split to evaluate on (none when it is empty)", choices=SPLITS)


register_data_kind("images", ImageDataConfig)


@dataclass
class PretrainConfig:
    """Everything `mlscale pretrain` is configured by; saved as RUN/config.json."""

    model: Any = option(default_factory=LlamaConfig, help="model family and shape",
                        select=("family", model_config_class))
    train: TrainConfig = option(default_factory=TrainConfig, help="optimisation")
    parallel: ParallelConfig = option(default_factory=ParallelConfig,
                                      help="data / tensor parallelism across torchrun ranks")
    data: Any = option(default_factory=TokenDataConfig, help="the training data",
                       select=("kind", data_config_class))

    def validate(self) -> None:
        for section in (self.model, self.train):
            if hasattr(section, "validate"):  # a family's config may have nothing to check
                section.validate()


def preset_names() -> list[str]:
    """Names of the TOML presets shipped in mlscale/presets."""
    from importlib.resources import files

    return sorted(p.name[:-5] for p in files("mlscale").joinpath("presets").iterdir()
                  if p.name.endswith(".toml"))


def load_preset(name: str) -> dict:
    """The settings of preset `name` (a shipped preset's name, or a path to a TOML file)."""
    import difflib
    from importlib.resources import as_file, files
    from pathlib import Path

    from mlscale.config import read_toml

    resource = files("mlscale").joinpath("presets").joinpath(f"{name.removesuffix('.toml')}.toml")
    if Path(name).exists() or "/" in name or (name.endswith(".toml") and not resource.is_file()):
        return read_toml(name)  # a file of the user's: a missing or unreadable one is named
    if not resource.is_file():
        names = preset_names()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset '{name}'{hint} (available: {', '.join(names) or 'none'})")
    with as_file(resource) as path:
        return read_toml(path)
