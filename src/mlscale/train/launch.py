"""What the training commands share: starting torchrun for `--nproc N`, reading a config
from preset, file and overrides, and leaving the process group cleanly."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from mlscale.config import describe, merge, parse_overrides, read_toml
from mlscale.errors import ConfigError
from mlscale.runtime.dist import destroy_distributed, launched_by_torchrun


def add_run_arguments(parser: argparse.ArgumentParser, noun: str, presets: bool = True) -> None:
    """--config, --preset, --resume, --force and --nproc, as the training commands have them."""
    from mlscale.train.config import preset_names

    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    if presets:
        parser.add_argument("--preset", metavar="NAME",
                            help=f"start from a shipped preset ({', '.join(preset_names())}) or a TOML file")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue the {noun} in the output directory from its latest checkpoint")
    parser.add_argument("--force", action="store_true", help="delete the output directory first and start over")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train on N processes of this machine: starts torchrun for you (same as "
                        "`torchrun --nproc_per_node=N -m mlscale ...`); choose DDP/FSDP/TP with "
                        "--parallel.strategy and --parallel.tp")


def raw_settings(args: argparse.Namespace, overrides: list[str] | dict[str, Any],
                 defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """defaults <- --preset <- --config FILE <- --section.key=value overrides, as one dict."""
    from mlscale.train.config import load_preset

    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other: --force deletes the run")
    data = dict(defaults or {})
    if getattr(args, "preset", None):
        data = merge(data, load_preset(args.preset))
    if getattr(args, "config", None) is not None:
        data = merge(data, read_toml(args.config))
    ov = parse_overrides(overrides) if isinstance(overrides, list) else overrides
    return merge(data, ov)


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run `mlscale ARGV` under torchrun with `nproc` local processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "mlscale", *argv]
    return subprocess.call(cmd)


def passthrough_argv(args: argparse.Namespace, positional: list[str], flags: tuple[str, ...],
                     overrides: list[str]) -> list[str]:
    """The command line again, minus --nproc: what each torchrun process runs."""
    argv = list(positional)
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is True:
            argv.append(flag)
        elif value not in (None, False):
            argv += [flag, str(value)]
    return argv + list(overrides)


def run_and_report(fn: Callable[[], dict[str, Any]]) -> int:
    """Run a training function, leave the process group, print the summary on rank 0."""
    try:
        summary = fn()
    except BaseException:
        destroy_distributed(finished=False)
        raise
    destroy_distributed()
    if not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def settings_table(cls: type, defaults: dict | None = None) -> str:
    """The --help table of a config's keys, defaults and meanings."""
    own = {f"{section}.{key}": repr(value) for section, values in (defaults or {}).items()
           if isinstance(values, dict) for key, value in values.items()}
    rows = [(key, own.get(key, default), help_) for key, _, default, help_ in describe(cls)]
    width = max(len(r[0]) for r in rows)
    return "settings (--section.key=value):\n" + "\n".join(
        f"  {key:<{width}}  {default:<10} {help_.splitlines()[0] if help_ else ''}"
        for key, default, help_ in rows)
