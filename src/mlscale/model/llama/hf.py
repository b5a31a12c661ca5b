"""The Hugging Face adapter of the Llama family: transformers' `LlamaForCausalLM` <-> ours.

Our model follows LlamaForCausalLM's conventions (see `model.py`), so the weights only
change names: `embed` -> `model.embed_tokens`, `blocks.i` -> `model.layers.i`, `attn` ->
`self_attn`, `attn_norm` -> `input_layernorm`, `mlp_norm` -> `post_attention_layernorm`,
`norm` -> `model.norm`. A tied output projection is written once (as the embedding) and
`tie_word_embeddings` tells transformers to share it.

The adapter (this module, the family's `hf`) offers what the generic export and
fine-tuning code call:

    hf_state_dict(model, dtype)            our weights under transformers' names
    hf_config(cfg, bos_id=, eos_id=, pad_id=, dtype=)   config.json
    load_hf(dir, seq_len=None)             a transformers Llama directory as (model, cfg)
    weight_files(dir)                      the safetensors files of such a directory
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlscale.errors import ArtifactError, InputError
from mlscale.model.llama.config import LlamaConfig

if TYPE_CHECKING:  # torch is imported where tensors are made: the family registers torch-free
    import torch
    from torch import nn

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"

# name pieces inside a block: (ours, transformers')
_BLOCK_RENAMES = (
    (".attn_norm.", ".input_layernorm."),
    (".mlp_norm.", ".post_attention_layernorm."),
    (".attn.", ".self_attn."),
)
# tensors transformers may store that carry no weights of ours
_HF_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


# ---------------------------------------------------------------------------- names
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


def expected_hf_names(cfg: LlamaConfig) -> set[str]:
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


# --------------------------------------------------------------------------- export
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


def hf_config(cfg: LlamaConfig, *, bos_id: int | None = None, eos_id: int | None = None,
              pad_id: int | None = None, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The LlamaConfig dict (config.json) of our config; dtype: of the weights (fp32).

    Both the v4 keys (`rope_theta`, `torch_dtype`) and the v5 ones (`rope_parameters`,
    `dtype`) are written, so the directory loads in either major version of transformers.
    """
    dtype_name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
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


# --------------------------------------------------------------------------- import
def config_from_hf(cfg: dict[str, Any], source: str, seq_len: int | None = None) -> LlamaConfig:
    """Our LlamaConfig for a transformers LlamaConfig dict; refuses features we lack."""
    if cfg.get("model_type") != MODEL_TYPE:
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
        mc = LlamaConfig(
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


def weight_files(d: Path) -> list[Path]:
    """The safetensors files of a Hugging Face model directory (one file or shards)."""
    index = d / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [d / n for n in names]
    single = d / "model.safetensors"
    if single.exists():
        return [single]
    raise InputError(f"{d}: no model.safetensors (or model.safetensors.index.json); only "
                     "safetensors Hugging Face checkpoints load here")


def load_hf(d: str | Path, seq_len: int | None = None) -> tuple[nn.Module, LlamaConfig]:
    """A transformers Llama directory as our Llama (fp32, CPU): the export's renaming run
    backwards."""
    import torch
    from safetensors import safe_open

    from mlscale.model.registry import get_family

    d = Path(d)
    cfg_path = d / "config.json"
    mc = config_from_hf(json.loads(cfg_path.read_text("utf-8")), str(cfg_path), seq_len)
    model = get_family(mc.family).build(mc)
    own = model.state_dict()
    ours_by_hf = {hf_name(k): k for k in own}
    loaded: set[str] = set()
    for f in weight_files(d):
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
