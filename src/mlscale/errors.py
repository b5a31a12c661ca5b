"""User-facing errors: the CLI prints their message on one line and exits non-zero.

Anything that is the user's doing (a bad file, a bad config key, a bad record) raises a
subclass of `MlscaleError`; anything else is a bug and keeps its traceback. The checked
reads at the end (`read_text`, `check_dir`, `check_out_dir`) turn what can go wrong with
a path the user named (missing, a directory instead of a file or the reverse, empty,
unreadable, not UTF-8) into one of these errors, naming the path and what to do; the
JSON and TOML readers (`artifacts.read_json`, `config.read_toml`) build on them.
"""
from __future__ import annotations

from pathlib import Path


class MlscaleError(Exception):
    """An error the user can fix; the message says what to do."""

    exit_code = 2


class ConfigError(MlscaleError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class InputError(MlscaleError):
    """An input file or record is missing, empty or malformed."""


class ArtifactError(MlscaleError):
    """An output directory or intermediate file is stale, corrupt or from another config."""


# ------------------------------------------------------------------------ checked reads
def read_text(path: str | Path, what: str = "input file", hint: str = "",
              error: type[MlscaleError] = InputError, allow_empty: bool = False) -> str:
    """The UTF-8 text of the file at `path`, or `error` naming it and saying what to do.

    `what` names the file in messages ("config file", "run table"); `hint` is appended to
    every message (e.g. "write one with `mlscale scaling fit --out DIR`"). An empty file
    (or one of only white space) is an error unless `allow_empty`.
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    if p.is_dir():
        raise error(f"{p} is a directory, not a {what}{tail}")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {p}{tail}") from None
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror or e}{tail}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{p} is not UTF-8 text (byte {e.start} is {data[e.start:e.start + 1]!r})"
                    f"{tail or f'; is it the right {what}?'}") from None
    if not allow_empty and not text.strip():
        raise error(f"{p} is empty{tail or f'; expected a {what}'}")
    return text


def check_dir(path: str | Path, what: str, hint: str = "",
              error: type[MlscaleError] = InputError) -> Path:
    """`path` as a Path if it is an existing directory, else `error` naming it."""
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    if not p.exists():
        raise error(f"{what} not found: {p}{tail}")
    if not p.is_dir():
        raise error(f"{p} is a file, not a directory: expected a {what}{tail}")
    return p


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """`path` as a Path if it is a directory or does not exist yet; a file there is refused
    (and left alone) with an ArtifactError."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ArtifactError(f"{p} is a file, not a directory: choose another {flag} "
                            "(the file was left as it is)")
    return p
