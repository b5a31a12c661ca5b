"""The model fine-tuning starts from (BASE): a `mlscale pretrain` run or a Hugging Face Llama.

A Hugging Face directory holds config.json (model_type "llama"), the weights as
safetensors (model.safetensors, or shards listed in model.safetensors.index.json) and
tokenizer.json. The family's Hugging Face adapter (`mlscale.model.llama.hf`) reads the
config and the weights; this module finds the tokenizer and records fingerprints.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from mlscale.artifacts import fingerprint_file
from mlscale.errors import InputError
from mlscale.finetune.config import RUN_INFO
from mlscale.model.registry import ModelFamily, family_names, get_family


@dataclass
class Base:
    """A loaded base model with what is needed to fine-tune it and find it again."""

    model: nn.Module            # on CPU, fp32
    model_config: Any           # the family's config dataclass
    tokenizer: Any
    kind: str                   # "mlscale" or "hf"
    path: Path
    step: int | None            # the pretraining step of an mlscale run
    fingerprints: dict[str, str]  # weight and tokenizer files -> content hash

    def describe(self) -> dict[str, Any]:
        """What FT/base.json records, so that the fine-tuned run can find its base again."""
        return {"kind": self.kind, "path": str(self.path.resolve()), "step": self.step,
                "fingerprints": self.fingerprints}


def hf_family(d: Path) -> ModelFamily:
    """The family whose Hugging Face adapter reads config.json's model_type; llama when
    none does (its loader then names what it takes)."""
    model_type = json.loads((Path(d) / "config.json").read_text("utf-8")).get("model_type")
    for name in family_names():
        family = get_family(name)
        if family.hf is not None and getattr(family.hf, "MODEL_TYPE", None) == model_type:
            return family
    return get_family("llama")


def is_hf_dir(d: Path) -> bool:
    cfg = Path(d) / "config.json"
    if not cfg.is_file():
        return False
    try:
        cfg_json = json.loads(cfg.read_text("utf-8"))
    except ValueError:  # not JSON, or not UTF-8 text: not a Hugging Face directory
        return False
    return isinstance(cfg_json, dict) and "model_type" in cfg_json


def load_base(path: str | Path, step: int | None = None) -> Base:
    """The base model at `path` (an mlscale run or a Hugging Face Llama), on CPU in fp32."""
    from mlscale.tokenize.tokenizer import load_tokenizer
    from mlscale.train.checkpoint import MODEL_FILE, TOKENIZER, load_run

    path = Path(path)
    if not path.is_dir():
        problem = "is a file, not a directory" if path.exists() else "not found"
        raise InputError(f"base model {problem}: {path} (give a `mlscale pretrain` run directory "
                         "or a Hugging Face Llama directory)")
    if (path / RUN_INFO).exists():
        raise InputError(f"{path} is a fine-tuned run; fine-tune its base instead, or export it "
                         "merged (`mlscale export {path} --format hf --merge`) and use that")
    if is_hf_dir(path):
        adapter = hf_family(path).hf
        model, mc = adapter.load_hf(path)
        tok_path = path / TOKENIZER
        if not tok_path.exists():
            raise InputError(f"{path} has no tokenizer.json; a Hugging Face base needs its "
                             "fast tokenizer file")
        tokenizer = load_tokenizer(tok_path)
        files = adapter.weight_files(path) + [tok_path]
        fps = {f.name: fingerprint_file(f) for f in files}
        return Base(model.float().eval(), mc, tokenizer, "hf", path, None, fps)
    run = load_run(path, step=step, device="cpu")
    fps = {"model.safetensors": fingerprint_file(Path(run.path) / MODEL_FILE),
           "tokenizer.json": fingerprint_file(path / TOKENIZER)}
    return Base(run.model.float(), run.config.model, run.tokenizer, "mlscale", path, run.step, fps)
