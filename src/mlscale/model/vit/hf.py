"""The Hugging Face adapter of the ViT family: transformers' `ViTForImageClassification`
<-> ours.

Our ViT with class-token pooling has transformers' layout (separate q/k/v with biases,
pre-norm LayerNorm blocks, exact GELU, the class token's position stored first, norm then
head on the class token), so the weights only change names. They are written under the
names every ViT checkpoint on the Hub uses (`vit.encoder.layer.i.attention.attention.query`,
...), which transformers 4 loads as they are and 5 renames as it loads; import reads those
and transformers 5's own (`vit.layers.i.attention.q_proj`, ...). transformers' ViT has no
register tokens, qk-norm, mean pooling or layer scale: the export refuses such a model.

Grey images. `pipeline("image-classification")` converts every PIL image to RGB before
the image processor sees it, so a 1-channel model is exported, by default, as a 3-channel
one whose patch kernel is ours divided by three on each channel: a grey image made RGB
has three equal channels, normalised alike, so the convolution sums to ours exactly (up
to float rounding). The processor then turns a PIL "L" image of the dataset into
[1, 3, H, W] whose every channel is our input. `rgb=False` keeps one channel
(`num_channels` 1, `do_convert_rgb` false): `AutoImageProcessor` then makes exactly our
[1, 1, H, W] input, but the pipeline cannot feed that model.

    save_hf(model, dir, class_names, image_mean=, image_std=)   write a directory
    load_hf(dir, in_channels=None)                              read one as (model, cfg)
    hf_state_dict / hf_config / preprocessor_config             the pieces, for other writers
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from mlscale.errors import ArtifactError, InputError
from mlscale.model.llama.hf import weight_files
from mlscale.model.vit.config import ViTConfig

if TYPE_CHECKING:  # torch is imported where tensors are made: the family registers torch-free
    import torch
    from torch import nn

__all__ = ["MODEL_TYPE", "class_names", "hf_config", "hf_state_dict", "load_hf", "preprocessor_config",
           "save_hf", "weight_files"]

MODEL_TYPE = "vit"
ARCHITECTURE = "ViTForImageClassification"

# our name (module, or parameter for the two tokens) -> transformers'
_TOP = {
    "patch_embed.proj": "vit.embeddings.patch_embeddings.projection",
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "norm": "vit.layernorm",
    "head": "classifier",
}
# module inside block i: (ours, the Hub's under vit.encoder.layer.i, transformers 5's under vit.layers.i)
_BLOCK = (
    ("norm1", "layernorm_before", "layernorm_before"),
    ("attn.q_proj", "attention.attention.query", "attention.q_proj"),
    ("attn.k_proj", "attention.attention.key", "attention.k_proj"),
    ("attn.v_proj", "attention.attention.value", "attention.v_proj"),
    ("attn.o_proj", "attention.output.dense", "attention.o_proj"),
    ("norm2", "layernorm_after", "layernorm_after"),
    ("mlp.fc1", "intermediate.dense", "mlp.fc1"),
    ("mlp.fc2", "output.dense", "mlp.fc2"),
)
# tensors of a transformers ViT that carry no weights of ours (ViTModel's pooler, SimMIM's mask token)
_IGNORED = ("vit.pooler.", "vit.embeddings.mask_token")


# ---------------------------------------------------------------------------- names
def hf_name(name: str, v5: bool = False) -> str | None:
    """transformers' name of our weight `name`, or None where it has none (registers, ...)."""
    if name in _TOP:
        return _TOP[name]
    module, _, param = name.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{param}"
    if name.startswith("blocks."):
        _, i, rest = name.split(".", 2)
        module, _, param = rest.rpartition(".")
        for ours, hub, new in _BLOCK:
            if module == ours:
                prefix = f"vit.layers.{i}." if v5 else f"vit.encoder.layer.{i}."
                return f"{prefix}{new if v5 else hub}.{param}"
    return None


def check_exportable(cfg: ViTConfig) -> None:
    """Refuse the settings transformers' ViTForImageClassification has no place for."""
    missing = [what for what, used in (
        ("convolutional stem (model.stem = \"conv\")", cfg.stem != "patch"),
        ("register tokens (model.registers > 0)", cfg.registers > 0),
        ("qk-norm (model.qk_norm = true)", cfg.qk_norm),
        ("mean pooling (model.pool = \"mean\")", cfg.pool != "cls"),
        ("layer scale (model.layer_scale > 0)", cfg.layer_scale > 0),
        ("model without a head (model.num_classes = 0)", cfg.num_classes == 0),
    ) if used]
    if missing:
        raise ArtifactError("transformers' ViTForImageClassification has no " + "; no ".join(missing)
                            + ": this model cannot be exported to it")


# --------------------------------------------------------------------------- export
def hf_state_dict(model: nn.Module, dtype: torch.dtype | None = None, rgb: bool = False) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names (contiguous CPU tensors).

    Sin-cos positions are written as the learned table of the configured grid. rgb: a
    1-channel patch kernel is spread over three channels (see the module docstring).
    """
    import torch

    cfg = model.cfg
    check_exportable(cfg)
    sd = dict(model.state_dict())
    if model.pos_embed is None:  # sin-cos: the class token's position is zero
        table = model.patch_positions((cfg.grid, cfg.grid), sd["cls_token"])
        sd["pos_embed"] = torch.cat((torch.zeros_like(table[:, :1]), table), dim=1)
    if rgb and cfg.in_channels == 1:
        w = sd["patch_embed.proj.weight"]
        sd["patch_embed.proj.weight"] = (w / 3).expand(-1, 3, -1, -1)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        theirs = hf_name(name)
        if theirs is None:
            raise ArtifactError(f"the model has a weight transformers' ViT has no place for ({name}); "
                                "merge adapters into the weights first (mlscale export --merge)")
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[theirs] = t.contiguous()
    return out


def hf_config(cfg: ViTConfig, *, class_names: Sequence[str] | None = None, dtype: torch.dtype | None = None,
              rgb: bool = False) -> dict[str, Any]:
    """The ViTConfig dict (config.json) of our config; class_names label the outputs
    (id2label / label2id; default "0", "1", ...). rgb: as `hf_state_dict`."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(cfg.num_classes)]
    if len(names) != cfg.num_classes:
        raise ArtifactError(f"{len(names)} class names for a model of {cfg.num_classes} classes")
    if len(set(names)) != len(names):
        raise ArtifactError("class names must be distinct (they become label2id's keys)")
    dtype_name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.mlp_hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "initializer_range": cfg.init_std,
        "layer_norm_eps": cfg.norm_eps,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "num_channels": 3 if rgb else cfg.in_channels,
        "qkv_bias": True,
        "encoder_stride": cfg.patch_size,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }


def preprocessor_config(cfg: ViTConfig, image_mean: Sequence[float], image_std: Sequence[float],
                        rgb: bool = False) -> dict[str, Any]:
    """preprocessor_config.json for `ViTImageProcessor`: resize to the training size, then
    (x / 255 - mean) / std per channel, as our training input. A 1-channel mean/std is
    repeated for an rgb export."""
    channels = 3 if rgb else cfg.in_channels
    mean, std = [float(m) for m in image_mean], [float(s) for s in image_std]
    if len(mean) != len(std) or len(mean) not in (cfg.in_channels, channels):
        raise ArtifactError(f"image_mean and image_std need {cfg.in_channels} values each "
                            f"(one per channel), got {len(mean)} and {len(std)}")
    if len(mean) != channels:
        mean, std = mean * channels, std * channels
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": cfg.image_size, "width": cfg.image_size},
        "resample": 2,  # PIL bilinear
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": channels == 3,
    }


def save_hf(model: nn.Module, out_dir: str | Path, class_names: Sequence[str] | None = None, *,
            image_mean: Sequence[float] = (0.5,), image_std: Sequence[float] = (0.5,),
            dtype: torch.dtype | None = None, rgb: bool | None = None) -> list[Path]:
    """Write `model` as a transformers ViTForImageClassification directory: config.json,
    model.safetensors and preprocessor_config.json, each atomically. image_mean/std: the
    normalisation the model was trained with ([0, 1] units). rgb: default true for a grey
    model (so the image-classification pipeline runs). Returns the files written."""
    from safetensors.torch import save_file

    from mlscale.artifacts import atomic_path, atomic_write_json

    cfg = model.cfg
    rgb = cfg.in_channels == 1 if rgb is None else rgb
    if rgb and cfg.in_channels not in (1, 3):
        raise ArtifactError(f"rgb export of a {cfg.in_channels}-channel model; only grey models are made RGB")
    tensors = hf_state_dict(model, dtype, rgb=rgb)  # checks the model before anything is written
    config = hf_config(cfg, class_names=class_names, dtype=dtype, rgb=rgb)
    pre = preprocessor_config(cfg, image_mean, image_std, rgb=rgb)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})  # transformers wants the format tag
    atomic_write_json(out / "config.json", config)
    atomic_write_json(out / "preprocessor_config.json", pre)
    return [out / "config.json", out / "model.safetensors", out / "preprocessor_config.json"]


# --------------------------------------------------------------------------- import
def _square(value: Any, key: str, source: str) -> int:
    """An int, or a pair of equal ints, from config.json; else a clear error."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{source}: {key}={value!r}; only square sizes load here")
    return value


def config_from_hf(cfg: dict[str, Any], source: str) -> ViTConfig:
    """Our ViTConfig for a transformers ViTConfig dict; refuses features we lack."""
    if cfg.get("model_type") != MODEL_TYPE:
        raise InputError(f"{source}: model_type is {cfg.get('model_type')!r}; only transformers ViT "
                         "models (model_type \"vit\") load here")
    if not cfg.get("qkv_bias", True):
        raise InputError(f"{source}: qkv_bias=false is not supported (our ViT's q/k/v have biases)")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise InputError(f"{source}: hidden_act={cfg['hidden_act']!r}; our ViT uses exact gelu")
    heads_classify = ARCHITECTURE in (cfg.get("architectures") or [ARCHITECTURE])
    try:
        d, ffn = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
        ratio = ffn / d if int(d * (ffn / d)) == ffn else (ffn + 0.5) / d  # int(d * ratio) == ffn
        mc = ViTConfig(
            image_size=_square(cfg.get("image_size", 224), "image_size", source),
            patch_size=_square(cfg.get("patch_size", 16), "patch_size", source),
            in_channels=int(cfg.get("num_channels", 3)),
            num_classes=len(cfg.get("id2label") or {}) if heads_classify else 0,
            d_model=d, n_layer=int(cfg["num_hidden_layers"]), n_head=int(cfg["num_attention_heads"]),
            mlp_ratio=ratio, pool="cls", pos_embed="learned",
            norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            init_std=float(cfg.get("initializer_range", 0.02)),
        )
    except KeyError as e:
        raise InputError(f"{source}: missing field {e.args[0]!r}") from None
    mc.validate()
    return mc


def class_names(d: str | Path) -> list[str]:
    """The label of each output of a transformers classification directory (id2label)."""
    cfg = json.loads((Path(d) / "config.json").read_text("utf-8"))
    id2label = cfg.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def _grey_kernel(d: Path, mc: ViTConfig) -> None:
    """Check that a 3-channel checkpoint may take grey images on one channel: its
    processor normalises the three channels alike (then the kernel sums over them)."""
    if mc.in_channels != 3:
        raise InputError(f"{d}: a {mc.in_channels}-channel model cannot be loaded with in_channels=1")
    pre_path = d / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text("utf-8")) if pre_path.is_file() else {}
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(set(mean)) == 1 and len(set(std)) == 1):
        raise InputError(f"{d}: folding the RGB patch kernel to one channel needs a "
                         "preprocessor_config.json with one mean and one std for all channels")


def load_hf(d: str | Path, in_channels: int | None = None) -> tuple[nn.Module, ViTConfig]:
    """A transformers ViT directory as our ViT (fp32, CPU): the export's renaming run
    backwards. in_channels=1 on an RGB checkpoint sums the patch kernel over the channels
    (exact for grey images, e.g. our own grey export)."""
    import torch
    from safetensors import safe_open

    from mlscale.model.registry import get_family

    d = Path(d)
    cfg_path = d / "config.json"
    mc = config_from_hf(json.loads(cfg_path.read_text("utf-8")), str(cfg_path))
    fold = in_channels == 1 and mc.in_channels != 1
    if fold:
        _grey_kernel(d, mc)
        mc.in_channels = 1
    elif in_channels is not None and in_channels != mc.in_channels:
        raise InputError(f"{d}: a {mc.in_channels}-channel model cannot be loaded with in_channels={in_channels}")
    model = get_family(mc.family).build(mc)
    own = model.state_dict()
    ours_by_hf = {hf_name(k, v5): k for k in own for v5 in (False, True)}
    loaded: set[str] = set()
    for f in weight_files(d):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                if key.startswith(_IGNORED):
                    continue
                ours = ours_by_hf.get(key)
                if ours is None:
                    raise ArtifactError(f"{f}: tensor {key} has no place in a ViT of this shape")
                t = fh.get_tensor(key).float()
                if fold and ours == "patch_embed.proj.weight":
                    t = t.sum(dim=1, keepdim=True)
                if tuple(t.shape) != tuple(own[ours].shape):
                    raise ArtifactError(f"{f}: {key} has shape {tuple(t.shape)}, config.json "
                                        f"implies {tuple(own[ours].shape)}")
                with torch.no_grad():
                    own[ours].copy_(t)
                loaded.add(ours)
    missing = [k for k in own if k not in loaded]
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise ArtifactError(f"{d}: the checkpoint lacks {', '.join(missing[:3])}{more}")
    return model, mc
