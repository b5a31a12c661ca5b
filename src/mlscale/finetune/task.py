"""What the fine-tuning tasks (sft, dpo) share: the base, the adapters, the data, the outputs.

    FT/stage.json, config.json, metrics.jsonl, checkpoints/, manifest.json   as any run
    FT/finetune.json              method, base (path, fingerprints), model shape, template
    FT/tokenizer.json             the base's tokenizer
    FT/adapter/                   lora/qlora: adapter_model.safetensors, adapter_config.json
                                  (PEFT layout) and template.json
    FT/model.safetensors          full: all the weights
    FT/ref_logps.safetensors      DPO: the reference log-probabilities, computed once

The trainer (train/trainer.py) runs them like any task: the same loop, checkpoints and
exact resume as pretraining, and DDP/FSDP under torchrun. Each data-parallel rank takes
its share of the global batch of rows (`epoch_order` over batch_size x ranks rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch.nn as nn

from mlscale.artifacts import atomic_path, atomic_write_bytes, atomic_write_json, fingerprint_file
from mlscale.config import from_dict, merge, to_dict
from mlscale.errors import ConfigError, InputError
from mlscale.finetune.base import Base, load_base
from mlscale.finetune.config import FINETUNE_DEFAULTS, RUN_INFO, FinetuneConfig
from mlscale.finetune.data import (PackedRows, PreferenceRows, TemplateRenderer,
                                   pack_examples, read_examples, read_preferences, split_holdout,
                                   tokenize_preferences)
from mlscale.model.lora import apply_lora, save_adapter
from mlscale.model.quant import quantize_linears
from mlscale.runtime import Runtime
from mlscale.train.checkpoint import TOKENIZER
from mlscale.train.sampling import epoch_order
from mlscale.train.task import Task

ADAPTER_DIR = "adapter"
TEMPLATE_FILE = "template.json"
FULL_WEIGHTS = "model.safetensors"


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


def prepare_model(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Make the parameters `cfg.method` trains trainable: all (full) or LoRA adapters on a
    frozen base, quantised to NF4 first for qlora (every projection of every block; the
    embedding and output head stay in full precision, as in QLoRA)."""
    import torch

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


class FinetuneTask(Task):
    """A fine-tuning task: a trained base, adapters or all weights, instruction data."""

    config_cls = FinetuneConfig
    stage = "finetune"
    unit = "token"
    needs_base = True
    eval_at_start = True
    run_marker = RUN_INFO
    data_kinds = ("records",)
    objective: ClassVar[str] = ""

    @classmethod
    def load_run(cls, run_dir: Path, step: int | None = None, device: Any = "cpu") -> Any:
        """The fine-tuned model: its base with the adapter merged (see finetune/merge.py)."""
        from mlscale.finetune.merge import load_finetuned

        return load_finetuned(run_dir, device=device)

    @classmethod
    def make_config(cls, settings: dict[str, Any]) -> FinetuneConfig:
        """Fine-tuning's own defaults under the settings; the task names the objective."""
        return from_dict(FinetuneConfig, merge(merge(FINETUNE_DEFAULTS, settings), {"objective": cls.objective}))

    def __init__(self, cfg: FinetuneConfig, data: Path, runtime: Runtime, base: Path | None = None):
        if base is None:
            raise ConfigError(f"task {self.name} fine-tunes a model: give the base run or HF directory")
        data = Path(data)
        if not data.is_file():
            raise InputError(f"data file not found: {data}")
        if cfg.data.val and not Path(cfg.data.val).is_file():
            raise InputError(f"data.val: file not found: {cfg.data.val}")
        super().__init__(cfg, data, runtime, Path(base))
        self.base = load_base(self.base_path)
        self.data = load_datasets(cfg, data, self.base)
        self._inputs = {"data": fingerprint_file(data),
                        **{f"base/{k}": v for k, v in self.base.fingerprints.items()}}
        if cfg.data.val:
            self._inputs["val"] = fingerprint_file(cfg.data.val)

    @property
    def family(self):  # the base's family, whatever model.* the config has
        from mlscale.model.registry import family_of

        return family_of(self.base.model_config)

    def inputs(self) -> dict[str, str]:
        return self._inputs

    def build_model(self) -> nn.Module:
        return prepare_model(self.base.model, self.cfg).to(self.runtime.device)

    def on_start(self, model: nn.Module, out_dir: Path) -> None:
        if self.runtime.is_main:
            atomic_write_bytes(out_dir / TOKENIZER, Path(self.base.tokenizer.path).read_bytes())

    def global_rows(self, index: int, n: int) -> np.ndarray:
        """The rows (out of `n`) of micro-batch `index` over all data-parallel ranks."""
        return epoch_order(n, self.cfg.train.batch_size * self.runtime.env.dp_size, self.cfg.train.seed, index)

    def rows(self, index: int, n: int) -> np.ndarray:
        """This rank's rows of micro-batch `index`: its share of the global batch."""
        size, rank = self.cfg.train.batch_size, self.runtime.env.dp_rank
        return self.global_rows(index, n)[rank * size:(rank + 1) * size]

    def flops_per_unit(self, model: nn.Module) -> float:
        return float(self.family.flops_per_sample(self.base.model_config, model))

    def finish(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """The adapter (lora/qlora) or the weights (full), and FT/finetune.json."""
        from mlscale.model.lora import count_parameters, lora_state_dict
        from mlscale.train.checkpoint import full_state, save_state

        cfg, base, data = self.cfg, self.base, self.data
        # gathered on every rank (collective under FSDP), written by rank 0
        weights = full_state(model, None)[0] if cfg.method == "full" else lora_state_dict(model)
        trainable, total = count_parameters(model)
        summary = {"method": cfg.method, "objective": cfg.objective, "total_parameters": total,
                   "trainable_share": trainable / total, **data.counts, "seq_len": data.seq_len}
        if not self.runtime.is_main:
            return summary
        template = to_dict(cfg.template)
        info: dict[str, Any] = {"method": cfg.method, "objective": cfg.objective, "base": base.describe(),
                                "family": self.family.name, "model": to_dict(base.model_config),
                                "template": template, "seq_len": data.seq_len, "steps": cfg.train.max_steps}
        if cfg.method == "full":
            with atomic_path(out_dir / FULL_WEIGHTS) as tmp:
                save_state(weights, model, tmp)
            info["weights"] = FULL_WEIGHTS
        else:
            adapter = out_dir / ADAPTER_DIR
            save_adapter(model, cfg.lora, adapter, base_model_name_or_path=str(base.path.resolve()),
                         state=weights)
            atomic_write_json(adapter / TEMPLATE_FILE, template)
            info["adapter"] = ADAPTER_DIR
        atomic_write_json(out_dir / RUN_INFO, info)
        return summary
