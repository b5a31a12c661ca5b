"""timm's `VisionTransformer` <-> our ViT: state-dict names, and the constructor arguments
of the same shape.

Our module names are timm's (patch_embed.proj, cls_token, reg_token, blocks.i.norm1,
attn.q_norm, ls1.gamma, mlp.fc1, norm, head) except in two places:

- timm fuses q, k and v in one `attn.qkv` (rows q | k | v) and calls the output
  projection `attn.proj`; ours are `attn.q_proj`, `k_proj`, `v_proj`, `o_proj`;
- with mean pooling timm normalises the pooled vector with `fc_norm` (its `norm` is then
  an identity without weights); ours is `norm` in both poolings.

Positions. timm's `pos_embed` covers the patches only (`no_embed_class=True`, as its
register models, or no class token), or the class and register tokens too. Ours stores the
class token's position first and gives registers none, so a register's timm position is
added into the register token and, with `no_embed_class`, the class token's position is
zero: both are constants added to a token, so the logits do not change. The export writes
the layout timm builds by default for the shape (`timm_kwargs`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlscale.errors import ArtifactError
from mlscale.model.vit.config import ViTConfig

if TYPE_CHECKING:
    import torch
    from torch import nn


def timm_kwargs(cfg: ViTConfig) -> dict[str, Any]:
    """Arguments of `timm.models.vision_transformer.VisionTransformer` for our shape (a
    LayerNorm eps other than timm's 1e-6 needs `norm_layer=partial(nn.LayerNorm, eps=...)`)."""
    _check_patch_stem(cfg)
    return {
        "img_size": cfg.image_size, "patch_size": cfg.patch_size, "in_chans": cfg.in_channels,
        "num_classes": cfg.num_classes, "embed_dim": cfg.d_model, "depth": cfg.n_layer,
        "num_heads": cfg.n_head, "mlp_ratio": cfg.mlp_ratio, "qkv_bias": True, "qk_norm": cfg.qk_norm,
        "init_values": cfg.layer_scale or None, "class_token": cfg.pool == "cls",
        "global_pool": "token" if cfg.pool == "cls" else "avg", "reg_tokens": cfg.registers,
        "no_embed_class": cfg.registers > 0, "dynamic_img_size": True,
    }


def _check_patch_stem(cfg: ViTConfig) -> None:
    if cfg.stem != "patch":
        raise ArtifactError("timm's VisionTransformer embeds patches with one convolution: a model with "
                            "model.stem = \"conv\" has no timm counterpart")


def timm_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under timm's names, in the layout of `timm_kwargs(model.cfg)`."""
    import torch

    _check_patch_stem(model.cfg)
    cfg = model.cfg
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if ".attn.q_proj." in name:
            kind = name.rsplit(".", 1)[1]
            base = name.split(".attn.")[0]
            qkv = [sd[f"{base}.attn.{x}_proj.{kind}"] for x in "qkv"]
            out[f"{base}.attn.qkv.{kind}"] = torch.cat(qkv, dim=0)
        elif ".attn.k_proj." in name or ".attn.v_proj." in name:
            continue  # written with q
        elif ".attn.o_proj." in name:
            out[name.replace(".attn.o_proj.", ".attn.proj.")] = t
        elif name.startswith("norm.") and cfg.pool == "mean":
            out["fc_norm." + name[len("norm."):]] = t
        else:
            out[name] = t
    if model.pos_embed is None:  # sin-cos: timm stores the table of the configured grid
        table = model.patch_positions((cfg.grid, cfg.grid), out["patch_embed.proj.weight"])
        out["pos_embed"] = table if model.cls_token is None else torch.cat((torch.zeros_like(table[:, :1]), table), 1)
    if cfg.registers and model.cls_token is not None:  # no_embed_class: the class position joins the token
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return {k: v.contiguous() for k, v in out.items()}


def _our_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's tensors under our names, positions in our layout."""
    import torch

    cfg = model.cfg
    ours: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if ".attn.qkv." in name:
            q, k, v = t.chunk(3, dim=0)
            for x, part in zip("qkv", (q, k, v)):
                ours[name.replace(".attn.qkv.", f".attn.{x}_proj.")] = part
        elif ".attn.proj." in name:
            ours[name.replace(".attn.proj.", ".attn.o_proj.")] = t
        elif name.startswith("fc_norm."):
            ours["norm." + name[len("fc_norm."):]] = t
        else:
            ours[name] = t
    pos, n_cls = ours.get("pos_embed"), int(model.cls_token is not None)
    n_patch, n_prefix = cfg.grid ** 2, n_cls + cfg.registers
    if pos is not None and pos.shape[1] == n_prefix + n_patch and n_prefix:
        # positions of every token: registers' join their tokens, the class token's stays first
        if cfg.registers:
            ours["reg_token"] = ours["reg_token"] + pos[:, n_cls:n_prefix]
        ours["pos_embed"] = torch.cat((pos[:, :n_cls], pos[:, n_prefix:]), dim=1)
    elif pos is not None and pos.shape[1] == n_patch and n_cls:
        ours["pos_embed"] = torch.cat((torch.zeros_like(pos[:, :1]), pos), dim=1)  # no_embed_class
    return ours


def load_timm_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> nn.Module:
    """Load a timm `VisionTransformer` state dict of the same shape into `model` (in place;
    returned). Unknown, missing or misshapen tensors are an ArtifactError naming them."""
    import torch

    _check_patch_stem(model.cfg)
    if model.pos_embed is None:
        raise ArtifactError("timm weights carry learned positions: build the model with "
                            "model.pos_embed = \"learned\" to load them")
    ours = _our_state_dict(model, sd)
    own = model.state_dict()
    extra, missing = sorted(set(ours) - set(own)), sorted(set(own) - set(ours))
    if extra or missing:
        raise ArtifactError("the timm state dict does not fit this ViT (unexpected: "
                            f"{', '.join(extra[:3]) or 'none'}; missing: {', '.join(missing[:3]) or 'none'})")
    for name, t in ours.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise ArtifactError(f"timm tensor for {name} has shape {tuple(t.shape)}, the model's "
                                f"is {tuple(own[name].shape)}")
        with torch.no_grad():
            own[name].copy_(t)
    return model
