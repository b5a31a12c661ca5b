"""Config selection: `model.family` and `data.kind` choose the section's dataclass; the keys
that may change on resume are declared on the fields."""
from dataclasses import dataclass

import pytest

from mlscale.config import from_dict, option, resumable_keys
from mlscale.errors import ConfigError
from mlscale.finetune.config import FinetuneConfig
from mlscale.model.llama import LlamaConfig
from mlscale.model.registry import ModelFamily, register_family
from mlscale.train.config import PretrainConfig, TokenDataConfig
from mlscale.train.trainer import identity_config


@dataclass
class WideConfig:
    family: str = option("wide", "model family")
    width: int = option(4, "width", min=1)


register_family(ModelFamily(name="wide", config_cls=WideConfig, build=lambda cfg: None,
                            blocks=lambda m: [], flops_per_sample=lambda cfg, m: 0.0))


def test_model_family_selects_the_dataclass_of_the_model_section():
    assert isinstance(from_dict(PretrainConfig, {}).model, LlamaConfig)
    cfg = from_dict(PretrainConfig, {"model": {"family": "wide", "width": 7}})
    assert isinstance(cfg.model, WideConfig) and cfg.model.width == 7
    with pytest.raises(ConfigError, match="unknown config key 'model.n_layer'"):
        from_dict(PretrainConfig, {"model": {"family": "wide", "n_layer": 2}})  # a llama key
    with pytest.raises(ConfigError, match="'model.n_layr'; did you mean 'model.n_layer'"):
        from_dict(PretrainConfig, {"model": {"n_layr": 2}})
    with pytest.raises(ConfigError, match="unknown family 'wid'; did you mean 'wide'"):
        from_dict(PretrainConfig, {"model": {"family": "wid"}})
    with pytest.raises(ConfigError, match="model.width: 0 is below the minimum 1"):
        from_dict(PretrainConfig, {"model": {"family": "wide", "width": 0}})


def test_data_kind_selects_the_dataclass_of_the_data_section():
    assert isinstance(from_dict(PretrainConfig, {}).data, TokenDataConfig)
    assert from_dict(FinetuneConfig, {}).data.kind == "records"
    with pytest.raises(ConfigError, match="unknown kind of data 'token'; did you mean 'tokens'"):
        from_dict(PretrainConfig, {"data": {"kind": "token"}})
    with pytest.raises(ConfigError, match="unknown config key 'data.pack'"):
        from_dict(PretrainConfig, {"data": {"pack": True}})  # a key of records, not of tokens


def test_resumable_keys_are_declared_on_the_fields():
    cfg = from_dict(PretrainConfig, {})
    keys = set(resumable_keys(cfg))
    assert {"train.max_steps", "train.eval_every", "train.batch_size", "train.log_to", "train.device",
            "parallel.strategy", "parallel.tp"} <= keys
    assert not keys & {"train.lr", "train.seed", "train.grad_accum", "model.n_layer", "data.kind"}
    identity = identity_config(cfg)
    assert "max_steps" not in identity["train"] and identity["train"]["lr"] == cfg.train.lr
    assert identity["model"]["family"] == "llama"
