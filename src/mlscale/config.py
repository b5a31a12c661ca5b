"""Typed configuration: nested dataclasses, TOML files and `--section.key=value` overrides.

Every stage has one config dataclass made of component dataclasses (`model`, `train`,
`near`, ...). Values are merged in this order: dataclass defaults, the TOML file, then
command-line overrides. Unknown keys fail with the closest valid key; a value of the
wrong type or out of range fails before any work starts, naming the key.

Declare fields with `option()` so the help text, choices and bounds live next to the
default; `describe()` turns a config class into the reference table of the README.
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from mlscale.errors import ConfigError, read_text

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: Iterable[Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    default_factory: Any = _MISSING,
    select: tuple[str, Any] | None = None,
    resumable: bool = False,
) -> Any:
    """A dataclass field with help text and optional choices / inclusive bounds.

    select: `(key, resolve)` for a section whose dataclass depends on one of its own
    values, e.g. `("family", model_config_class)` for `model`: `model.family` names the
    dataclass (`resolve(name) -> type`) that the rest of the section must fit.
    resumable: the key may change when an interrupted run is resumed (it steers the
    hardware, bookkeeping or length of the run, not what has been learnt so far).
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None,
            "min": min, "max": max, "select": select, "resumable": resumable}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- parsing
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from TOML or a command-line string) to type `tp`, or fail naming `key`."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        for a in allowed:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}")
    if origin in (list, tuple):
        (inner, *_rest) = get_args(tp) or (str,)
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        out = [_coerce(v, inner, key) for v in items]
        return out if origin is list else tuple(out)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of settings, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def _suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check_bounds(f: dataclasses.Field, value: Any, key: str) -> None:
    meta = f.metadata
    choices = meta.get("choices")
    if choices and value is not None:
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v not in choices:
                raise ConfigError(f"{key}: {v!r} is not one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{key}: {value} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key}: {value} is above the maximum {hi}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict, checking keys, types and bounds."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = prefix + name
        if name not in fields:
            valid = [prefix + n for n in fields]
            raise ConfigError(f"unknown config key '{key}'{_suggest(key, valid)}")
        selected = _selected_class(fields[name], value, key)
        value = _coerce(value, selected or hints[name], key)
        _check_bounds(fields[name], value, key)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field without default
        raise ConfigError(f"{prefix or 'config'}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _selected_class(f: dataclasses.Field, value: Any, key: str) -> type | None:
    """The dataclass a `select` section's value names (see `option`), or None."""
    select = f.metadata.get("select")
    if select is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table of settings, got {value!r}")
    selector, resolve = select
    name = value.get(selector)
    if name is None:  # the default's own choice
        name = getattr(f.default_factory(), selector)  # type: ignore[misc]
    return resolve(str(name))


def resumable_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the fields of config `cfg` declared `resumable` (see `option`)."""
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += resumable_keys(value, prefix + f.name + ".")
        elif f.metadata.get("resumable"):
            keys.append(prefix + f.name)
    return keys


def without_keys(config: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A deep copy of the config dict without the dotted `keys`."""
    import copy

    out = copy.deepcopy(config)
    for key in keys:
        *path, name = key.split(".")
        node = out
        for part in path:
            node = node.get(part, {})
        node.pop(name, None)
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (JSON/TOML-safe)."""
    return dataclasses.asdict(cfg)


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """`["--a.b=1", "--a.c", "x", "--flag"]` -> `{"a": {"b": "1", "c": "x", "flag": "true"}}`."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) <= 2:
            raise ConfigError(f"unexpected argument '{tok}': overrides look like --section.key=value")
        body = tok[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            key, value = body, tokens[i + 1]
            i += 1
        else:
            key, value = body, "true"
        set_dotted(out, key.replace("-", "_"), value)
        i += 1
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `tree["a"]["b"] = value` for `dotted == "a.b"`, creating tables on the way."""
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{dotted}': '{p}' is a value, not a table")
        node = nxt
    node[parts[-1]] = value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `update` into a copy of `base`."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a TOML file; a missing, empty or non-text file, or a syntax error (with its
    line), is a ConfigError naming the file."""
    p = Path(path)
    text = read_text(p, what, error=ConfigError)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    what: str = "config file",
) -> T:
    """Defaults <- `base` (e.g. a preset) <- TOML file at `path` <- `overrides`; `what`
    names the file in messages."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = merge(data, read_toml(path, what))
    if overrides:
        ov = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        data = merge(data, ov)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from None
        raise


def diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, as `key: old -> new`."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, prefix + k + ".")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows (key, type, default, help) for every leaf field, for docs and `--help`."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.metadata.get("select") is not None:  # the default choice's keys
            tp = type(f.default_factory())  # type: ignore[misc]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, prefix + f.name + ".")
            continue
        if f.default is not _MISSING:
            default = f.default
        elif f.default_factory is not _MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        choices = f.metadata.get("choices")
        tname = " | ".join(map(str, choices)) if choices else _type_name(tp)
        rows.append((prefix + f.name, tname, repr(default) if default != "(required)" else default,
                     f.metadata.get("help", "")))
    return rows
