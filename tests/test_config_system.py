"""The typed config system: TOML, overrides, unknown keys, bad values."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mlscale.config import describe, diff, load_config, option, parse_overrides
from mlscale.errors import ConfigError


@dataclass
class Inner:
    lr: float = option(1e-3, "learning rate", min=0.0)
    steps: int = option(10, "steps", min=1)
    device: Literal["auto", "cpu", "cuda"] = option("auto", "device")
    names: list[str] = option(["a", "b"], "names")
    enabled: bool = option(True, "on or off")
    path: str | None = option(None, "optional path")


@dataclass
class Outer:
    train: Inner = field(default_factory=Inner)
    mode: str = option("x", "mode", choices=["x", "y"])


def test_defaults_then_toml_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('mode = "y"\n[train]\nlr = 0.5\nsteps = 3\n')
    cfg = load_config(Outer, f, ["--train.steps=7", "--train.names", "p,q", "--train.enabled=false"])
    assert cfg.mode == "y"
    assert cfg.train.lr == 0.5
    assert cfg.train.steps == 7
    assert cfg.train.names == ["p", "q"]
    assert cfg.train.enabled is False
    assert cfg.train.device == "auto"


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stesp'.*did you mean 'train.steps'"):
        load_config(Outer, overrides=["--train.stesp=3"])
    f = tmp_path / "c.toml"
    f.write_text("[trian]\nlr = 1\n")
    with pytest.raises(ConfigError, match=r"c.toml: unknown config key 'trian'.*'train'"):
        load_config(Outer, f)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--train.steps=abc", "train.steps: expected an integer"),
        ("--train.steps=0", "train.steps: 0 is below the minimum 1"),
        ("--train.lr=fast", "train.lr: expected a number"),
        ("--train.device=tpu", "train.device: 'tpu' is not one of"),
        ("--train.enabled=maybe", "train.enabled: expected true or false"),
        ("--mode=z", "mode: 'z' is not one of x, y"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, overrides=[override])


def test_override_forms_and_optional():
    assert parse_overrides(["--a.b=1", "--a.c", "x", "--a.flag"]) == {"a": {"b": "1", "c": "x", "flag": "true"}}
    cfg = load_config(Outer, overrides=["--train.path=/tmp/x", "--train.steps=1e3"])
    assert cfg.train.path == "/tmp/x" and cfg.train.steps == 1000
    assert load_config(Outer, overrides=["--train.path=none"]).train.path is None


def test_invalid_toml_names_the_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[train\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(Outer, f)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.toml")


def test_diff_and_describe():
    assert diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == ["a.c: 2 -> 3"]
    rows = {r[0]: r for r in describe(Outer)}
    assert rows["train.lr"][2] == "0.001" and rows["train.lr"][3] == "learning rate"
    assert rows["mode"][1] == "x | y"
