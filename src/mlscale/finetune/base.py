"""The model fine-tuning starts from (BASE): a `mlscale pretrain` run or a Hugging Face Llama.

A Hugging Face directory holds config.json (model_type "llama"), the weights as
safetensors (model.safetensors, or shards listed in model.safetensors.index.json) and
tokenizer.json. Our Llama follows transformers' conventions (rotate-half rotary
embeddings, RMSNorm, SwiGLU, no biases), so loading it is the export's renaming of
tensors (`mlscale.export.hf.hf_name`) run backwards.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mlscale.artifacts import fingerprint_file
from mlscale.errors import ArtifactError, InputError
from mlscale.finetune.config import RUN_INFO
from mlscale.model.config import ModelConfig

# tensors transformers may store that carry no weights of ours
_HF_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


@dataclass
class Base:
    """A loaded base model with what is needed to fine-tune it and find it again."""

    model: nn.Module            # Llama, on CPU, fp32
    model_config: ModelConfig
    tokenizer: Any
    kind: str                   # "mlscale" or "hf"
    path: Path
    step: int | None            # the pretraining step of an mlscale run
    fingerprints: dict[str, str]  # weight and tokenizer files -> content hash

    def describe(self) -> dict[str, Any]:
        """What FT/base.json records, so that the fine-tuned run can find its base again."""
        return {"kind": self.kind, "path": str(self.path.resolve()), "step": self.step,
                "fingerprints": self.fingerprints}


def model_config_from_hf(cfg: dict[str, Any], source: str, seq_len: int | None = None) -> ModelConfig:
    """Our ModelConfig for a transformers LlamaConfig dict; refuses features we lack."""
    if cfg.get("model_type") != "llama":
        raise InputError(f"{source}: model_type is {cfg.get('model_type')!r}; only Llama models "
                         "(model_type \"llama\") can be fine-tuned here")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise InputError(f"{source}: {key}=true is not supported (our Llama has no biases)")
    # transformers 4 writes rope_theta / rope_scaling, 5 writes rope_parameters
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise InputError(f"{source}: rope scaling {rope} is not supported; only plain rotary "
                         "embeddings load here")
    theta = cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0
    if cfg.get("hidden_act", "silu") != "silu":
        raise InputError(f"{source}: hidden_act={cfg['hidden_act']!r}; our SwiGLU uses silu")
    try:
        d, heads, ffn = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), int(cfg["intermediate_size"])
        head_dim = int(cfg.get("head_dim") or d // heads)
        if head_dim * heads != d:
            raise InputError(f"{source}: head_dim={head_dim} x {heads} heads != hidden_size={d}; "
                             "not supported")
        mc = ModelConfig(
            n_layer=int(cfg["num_hidden_layers"]), n_head=heads,
            n_kv_head=int(cfg.get("num_key_value_heads") or heads), d_model=d,
            seq_len=int(seq_len or cfg.get("max_position_embeddings", 2048)),
            vocab_size=int(cfg["vocab_size"]),
            # hidden = multiple_of * ceil(int(mult * d) / multiple_of) == ffn exactly
            ffn_mult=ffn / d, ffn_multiple_of=ffn,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rope_theta=float(theta),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        )
    except KeyError as e:
        raise InputError(f"{source}: missing field {e.args[0]!r}") from None
    mc.validate()
    if mc.ffn_hidden != ffn:  # pragma: no cover - guarded by the arithmetic above
        raise InputError(f"{source}: cannot represent intermediate_size={ffn}")
    return mc


def _hf_weight_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [d / n for n in names]
    single = d / "model.safetensors"
    if single.exists():
        return [single]
    raise InputError(f"{d}: no model.safetensors (or model.safetensors.index.json); only "
                     "safetensors Hugging Face checkpoints load here")


def load_hf_llama(d: Path, seq_len: int | None = None) -> tuple[nn.Module, ModelConfig]:
    """A transformers Llama directory as our Llama (fp32, CPU)."""
    from safetensors import safe_open

    from mlscale.export.hf import hf_name
    from mlscale.model.llama import Llama

    d = Path(d)
    cfg_path = d / "config.json"
    mc = model_config_from_hf(json.loads(cfg_path.read_text("utf-8")), str(cfg_path), seq_len)
    model = Llama(mc)
    own = model.state_dict()
    ours_by_hf = {hf_name(k): k for k in own}  # the export's naming, inverted
    loaded: set[str] = set()
    for f in _hf_weight_files(d):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                if _HF_IGNORED.fullmatch(key):
                    continue
                ours = ours_by_hf.get(key)
                if ours is None:
                    raise ArtifactError(f"{f}: tensor {key} has no place in a Llama of this shape")
                t = fh.get_tensor(key)
                if tuple(t.shape) != tuple(own[ours].shape):
                    raise ArtifactError(f"{f}: {key} has shape {tuple(t.shape)}, config.json "
                                        f"implies {tuple(own[ours].shape)}")
                with torch.no_grad():
                    own[ours].copy_(t.float())
                loaded.add(ours)
    missing = [k for k in own if k not in loaded and not (k == "lm_head.weight" and mc.tie_embeddings)]
    if missing:
        raise ArtifactError(f"{d}: the checkpoint lacks {', '.join(missing[:3])}"
                            + (" ..." if len(missing) > 3 else ""))
    return model, mc


def is_hf_dir(d: Path) -> bool:
    cfg = Path(d) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "model_type" in json.loads(cfg.read_text("utf-8"))
    except json.JSONDecodeError:
        return False


def load_base(path: str | Path, step: int | None = None) -> Base:
    """The base model at `path` (an mlscale run or a Hugging Face Llama), on CPU in fp32."""
    from mlscale.tokenize.tokenizer import load_tokenizer
    from mlscale.train.checkpoint import MODEL_FILE, TOKENIZER, load_run

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"base model not found: {path} (give a `mlscale pretrain` run directory "
                         "or a Hugging Face Llama directory)")
    if (path / RUN_INFO).exists():
        raise InputError(f"{path} is a fine-tuned run; fine-tune its base instead, or export it "
                         "merged (`mlscale export {path} --format hf --merge`) and use that")
    if is_hf_dir(path):
        model, mc = load_hf_llama(path)
        tok_path = path / TOKENIZER
        if not tok_path.exists():
            raise InputError(f"{path} has no tokenizer.json; a Hugging Face base needs its "
                             "fast tokenizer file")
        tokenizer = load_tokenizer(tok_path)
        files = _hf_weight_files(path) + [tok_path]
        fps = {f.name: fingerprint_file(f) for f in files}
        return Base(model.float().eval(), mc, tokenizer, "hf", path, None, fps)
    run = load_run(path, step=step, device="cpu")
    fps = {"model.safetensors": fingerprint_file(Path(run.path) / MODEL_FILE),
           "tokenizer.json": fingerprint_file(path / TOKENIZER)}
    return Base(run.model.float(), run.config.model, run.tokenizer, "mlscale", path, run.step, fps)
