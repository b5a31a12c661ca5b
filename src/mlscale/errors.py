"""User-facing errors: the CLI prints their message on one line and exits non-zero.

Anything that is the user's doing (a bad file, a bad config key, a bad record) raises a
subclass of `MlscaleError`; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class MlscaleError(Exception):
    """An error the user can fix; the message says what to do."""

    exit_code = 2


class ConfigError(MlscaleError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class InputError(MlscaleError):
    """An input file or record is missing, empty or malformed."""


class ArtifactError(MlscaleError):
    """An output directory or intermediate file is stale, corrupt or from another config."""
