"""Language modelling: next-token prediction on the token shards of `mlscale tokenize`.

The task behind `mlscale pretrain` (and `mlscale train --task lm`). A micro-batch is
`train.batch_size` random windows of `model.seq_len + 1` tokens drawn from a generator
seeded by (train.seed, micro-batch index) — nanoGPT's sampling, made resumable — of
which this data-parallel rank takes its share. Evaluation is the mean loss over
`train.eval_batches` random validation windows, the same ones at every evaluation.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mlscale.artifacts import fingerprint_file, fingerprint_obj, read_json
from mlscale.errors import ConfigError, InputError
from mlscale.runtime import Runtime
from mlscale.runtime.device import autocast
from mlscale.runtime.dist import mean_over_dp
from mlscale.train.checkpoint import TOKENIZER
from mlscale.train.config import PretrainConfig
from mlscale.train.task import Task, register_task

EVAL_SEED_OFFSET = 1_000_003  # validation windows come from a generator apart from training's


def open_token_data(data_dir: Path) -> Any:
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


def fill_vocab(cfg: PretrainConfig, vocab_size: int) -> PretrainConfig:
    """`cfg` with model.vocab_size taken from the tokenizer when it is 0."""
    cfg = copy.deepcopy(cfg)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab_size
    elif cfg.model.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the "
                          f"tokenizer's vocabulary ({vocab_size}); leave it 0 to take it from the tokenizer")
    return cfg


@register_task
class LanguageModeling(Task):
    """Mean next-token cross entropy on random windows of the token stream."""

    name = "lm"
    config_cls = PretrainConfig
    stage = "pretrain"
    unit = "token"
    data_kinds = ("tokens",)

    def __init__(self, cfg: PretrainConfig, data: Path, runtime: Runtime, base: Path | None = None):
        from mlscale.tokenize.tokenizer import load_tokenizer

        data = Path(data)
        self.tokens = open_token_data(data)
        self.tokenizer_path = data / TOKENIZER
        tokenizer = load_tokenizer(self.tokenizer_path)
        super().__init__(fill_vocab(cfg, tokenizer.vocab_size), data, runtime, base)
        for split in {cfg.data.train_split, cfg.data.val_split}:
            self.tokens.check_ids(split, self.cfg.model.vocab_size)
        self.train_split = self.tokens.split(cfg.data.train_split)
        self.val_split = self.tokens.split(cfg.data.val_split)
        need = self.cfg.model.seq_len + 1
        if len(self.train_split) < need:
            raise InputError(f"{data}: the {cfg.data.train_split} split has {len(self.train_split)} tokens, fewer than "
                             f"model.seq_len + 1 = {need}; use more data or a shorter context")
        if len(self.val_split) < need:
            self.val_split = None
            if runtime.is_main:
                print(f"note: the {cfg.data.val_split} split of {data} has fewer than {need} tokens; "
                      "no validation loss")
        # the tokens' content (shard hashes), not the manifest file, whose timings change
        # when the same data is tokenized again
        manifest = read_json(data / "manifest.json")
        self._inputs = {"tokenizer": fingerprint_file(self.tokenizer_path),
                        "tokens": fingerprint_obj({k: manifest.get(k) for k in ("dtype", "splits")})}

    @classmethod
    def on_arrays(cls, cfg: PretrainConfig, train: Any, val: Any | None, runtime: Runtime) -> "LanguageModeling":
        """The task on token arrays in memory (benchmarks, notebooks): no token directory,
        no tokenizer; `cfg.model.vocab_size` must be set."""
        task = cls.__new__(cls)
        Task.__init__(task, cfg, Path("."), runtime)
        task.train_split, task.val_split, task._inputs = train, val, {}
        task.tokenizer_path = None
        return task

    def inputs(self) -> dict[str, str]:
        return self._inputs

    def on_start(self, model: nn.Module, out_dir: Path) -> None:
        from mlscale.artifacts import atomic_write_bytes

        if self.runtime.is_main and self.tokenizer_path is not None:  # generate/export need it
            atomic_write_bytes(out_dir / TOKENIZER, self.tokenizer_path.read_bytes())

    def draw(self, split: Any, index: int, seed: int) -> tuple[Tensor, Tensor]:
        """Micro-batch `index` of `split`: this data-parallel rank's share of a global
        random batch (tensor-parallel ranks of one data-parallel group share it)."""
        from mlscale.tokenize.batches import sample_batch

        env, device = self.runtime.env, self.runtime.device
        x, y = sample_batch(split, self.cfg.train.batch_size, self.cfg.model.seq_len, seed, index,
                            env.dp_rank, env.dp_size)
        if device.type == "cuda":
            return (x.pin_memory().to(device, non_blocking=True),
                    y.pin_memory().to(device, non_blocking=True))
        return x.to(device), y.to(device)

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        return self.draw(self.train_split, index, self.cfg.train.seed)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        with autocast(self.runtime.device, self.runtime.dtype):
            _, loss = model(x, y)
        return loss, {}

    def units(self, batch: tuple[Tensor, Tensor]) -> int:
        return batch[0].numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss over `train.eval_batches` random validation batches (as nanoGPT)."""
        if self.val_split is None:
            return {}
        was_training = model.training
        model.eval()
        total = torch.zeros((), device=self.runtime.device)
        seed = self.cfg.train.seed + EVAL_SEED_OFFSET
        for i in range(self.cfg.train.eval_batches):
            total += self.loss(model, self.draw(self.val_split, i, seed))[0].float()
        model.train(was_training)
        return {"val_loss": float(mean_over_dp(total / self.cfg.train.eval_batches, self.runtime.env))}
