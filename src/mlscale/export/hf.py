"""Write a model as a Hugging Face model directory that transformers loads as is.

    DIR/config.json                 the family's transformers config (e.g. LlamaConfig)
    DIR/generation_config.json      bos / eos / pad ids
    DIR/model.safetensors           weights under transformers' names
    DIR/tokenizer.json              the run's tokenizer (HF `tokenizers` format)
    DIR/tokenizer_config.json       PreTrainedTokenizerFast with the special tokens
    DIR/special_tokens_map.json

What the weights and config.json are called is the model family's business (its `hf`
adapter, e.g. `mlscale.model.llama.hf`); this module writes the directory.
"""
from __future__ import annotations

import shutil
from pathlib import Path
import torch
from torch import nn

from mlscale.artifacts import atomic_path, atomic_write_json
from mlscale.errors import ArtifactError
from mlscale.model.registry import family_of

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_TORCH_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _tokenizer_files(tokenizer_file: Path, out_dir: Path, model_max_length: int) -> dict[str, int]:
    """Copy tokenizer.json and describe it for AutoTokenizer; returns the special ids."""
    from mlscale.tokenize.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_file)
    names = {role: tok.hf.id_to_token(i) for role, i in
             (("bos", tok.bos_id), ("eos", tok.eos_id), ("pad", tok.pad_id))}
    if tok.unk_id is not None:
        names["unk"] = tok.hf.id_to_token(tok.unk_id)
    with atomic_path(out_dir / "tokenizer.json") as tmp:
        shutil.copyfile(tokenizer_file, tmp)
    special = {f"{role}_token": name for role, name in names.items()}
    atomic_write_json(out_dir / "special_tokens_map.json", special)
    atomic_write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": model_max_length,
        # our tokenizer adds no bos/eos while encoding; say so, so transformers agrees
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    })
    return {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id}


def export_hf(model: nn.Module, out_dir: Path, tokenizer_file: Path | None = None,
              dtype: torch.dtype | str | None = None) -> list[Path]:
    """Write `model` and its tokenizer as a transformers model directory.

    dtype: of the written weights ("fp32", "bf16", "fp16" or a torch dtype); default: the
    model's own. Every file is written atomically. Returns the files written.
    """
    from safetensors.torch import save_file

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ArtifactError(f"export dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    weight_dtype = dtype or next(model.parameters()).dtype
    if weight_dtype not in _TORCH_DTYPE_NAMES:
        raise ArtifactError(f"cannot export weights of dtype {weight_dtype}")
    cfg = model.cfg
    family = family_of(cfg)
    if family.hf is None:
        raise ArtifactError(f"model family '{family.name}' has no Hugging Face export")
    tensors = family.hf.hf_state_dict(model, weight_dtype)  # checks the layout before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special: dict[str, int | None] = {"bos": None, "eos": None, "pad": None}
    if tokenizer_file is not None:
        special.update(_tokenizer_files(Path(tokenizer_file), out_dir, cfg.seq_len))

    with atomic_path(out_dir / "model.safetensors") as tmp:
        # transformers refuses safetensors files without format metadata
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    ids = {"bos_id": special["bos"], "eos_id": special["eos"], "pad_id": special["pad"]}
    atomic_write_json(out_dir / "config.json", family.hf.hf_config(cfg, **ids, dtype=weight_dtype))
    atomic_write_json(out_dir / "generation_config.json", {
        "bos_token_id": special["bos"], "eos_token_id": special["eos"],
        "pad_token_id": special["pad"], "max_length": cfg.seq_len,
    })
    names = ["config.json", "generation_config.json", "model.safetensors"]
    if tokenizer_file is not None:
        names += ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    return [out_dir / n for n in names]
