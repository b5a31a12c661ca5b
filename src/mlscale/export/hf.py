"""Write a `Llama` as a Hugging Face model directory that `LlamaForCausalLM` loads as is.

    DIR/config.json                 LlamaConfig (architectures ["LlamaForCausalLM"])
    DIR/generation_config.json      bos / eos / pad ids
    DIR/model.safetensors           weights under transformers' names
    DIR/tokenizer.json              the run's tokenizer (HF `tokenizers` format)
    DIR/tokenizer_config.json       PreTrainedTokenizerFast with the special tokens
    DIR/special_tokens_map.json

Our model follows LlamaForCausalLM's conventions (see `mlscale.model.llama`), so the
weights only change names: `embed` -> `model.embed_tokens`, `blocks.i` -> `model.layers.i`,
`attn` -> `self_attn`, `attn_norm` -> `input_layernorm`, `mlp_norm` ->
`post_attention_layernorm`, `norm` -> `model.norm`. A tied output projection is written
once (as the embedding) and `tie_word_embeddings` tells transformers to share it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlscale.artifacts import atomic_path, atomic_write_json
from mlscale.errors import ArtifactError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_TORCH_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

# name pieces inside a block: (ours, transformers')
_BLOCK_RENAMES = (
    (".attn_norm.", ".input_layernorm."),
    (".mlp_norm.", ".post_attention_layernorm."),
    (".attn.", ".self_attn."),
)


def hf_name(name: str) -> str:
    """transformers' name of our weight `name` (e.g. blocks.0.attn.q_proj.weight)."""
    if name == "norm.weight":
        return "model.norm.weight"
    if name.startswith("embed."):
        return "model.embed_tokens." + name[len("embed."):]
    if name.startswith("blocks."):
        name = "model.layers." + name[len("blocks."):]
        for ours, theirs in _BLOCK_RENAMES:
            name = name.replace(ours, theirs)
    return name


def expected_hf_names(cfg) -> set[str]:
    """Every weight name LlamaForCausalLM of this shape loads."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg.tie_embeddings:
        names.add("lm_head.weight")
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {f"{p}self_attn.{x}_proj.weight" for x in "qkvo"}
        names |= {f"{p}mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
    return names


def hf_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names (contiguous CPU tensors, tied head left out).

    Refuses a model carrying weights LlamaForCausalLM has no place for (unmerged LoRA
    adapters, quantised layers), rather than writing a directory that loads wrongly.
    """
    cfg = model.cfg
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue  # the same tensor as embed.weight; transformers re-ties it
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[hf_name(name)] = t.contiguous()
    expected = expected_hf_names(cfg)
    if set(out) != expected:
        extra = sorted(set(out) - expected)
        missing = sorted(expected - set(out))
        raise ArtifactError(
            "the model does not have the plain Llama layout transformers expects "
            f"(unexpected: {', '.join(extra[:3]) or 'none'}; missing: {', '.join(missing[:3]) or 'none'}); "
            "merge adapters into the weights first (mlscale export --merge)")
    return out


def hf_config(cfg, *, bos_id: int | None = None, eos_id: int | None = None,
              pad_id: int | None = None, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The LlamaConfig dict (config.json) of a ModelConfig.

    Both the v4 keys (`rope_theta`, `torch_dtype`) and the v5 ones (`rope_parameters`,
    `dtype`) are written, so the directory loads in either major version of transformers.
    """
    dtype_name = _TORCH_DTYPE_NAMES[dtype]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "use_cache": True,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }


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
    """Write `model` (a Llama) and its tokenizer as a transformers model directory.

    dtype: of the written weights ("fp32", "bf16", "fp16" or a torch dtype); default: the
    model's own. Every file is written atomically. Returns the files written.
    """
    from safetensors.torch import save_file

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ArtifactError(f"export dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    weight_dtype = dtype or model.embed.weight.dtype
    if weight_dtype not in _TORCH_DTYPE_NAMES:
        raise ArtifactError(f"cannot export weights of dtype {weight_dtype}")
    tensors = hf_state_dict(model, weight_dtype)  # checks the layout before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    special: dict[str, int | None] = {"bos": None, "eos": None, "pad": None}
    if tokenizer_file is not None:
        special.update(_tokenizer_files(Path(tokenizer_file), out_dir, cfg.seq_len))

    with atomic_path(out_dir / "model.safetensors") as tmp:
        # transformers refuses safetensors files without format metadata
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    ids = {"bos_id": special["bos"], "eos_id": special["eos"], "pad_id": special["pad"]}
    atomic_write_json(out_dir / "config.json", hf_config(cfg, **ids, dtype=weight_dtype))
    atomic_write_json(out_dir / "generation_config.json", {
        "bos_token_id": special["bos"], "eos_token_id": special["eos"],
        "pad_token_id": special["pad"], "max_length": cfg.seq_len,
    })
    names = ["config.json", "generation_config.json", "model.safetensors"]
    if tokenizer_file is not None:
        names += ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    return [out_dir / n for n in names]
