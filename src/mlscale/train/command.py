"""Pretrain a LLaMA-style decoder on the token shards of `mlscale tokenize`.

Settings come from the defaults, then --preset, then --config FILE, then
--section.key=value overrides (e.g. --train.max_steps=500 --model.d_model=256).

The run directory (--out):
  new or empty      a run starts there;
  holds a run       refused, so nothing is overwritten by accident, unless
    --resume        continues from its latest checkpoint (the same batches follow, so the
                    losses are those of an uninterrupted run). Only these settings may
                    change on resume: train.max_steps, eval_every, eval_batches,
                    checkpoint_every, keep_checkpoints, log_every, compile, device;
                    another model shape, tokenizer or optimiser setting is refused;
    --force         deletes it and starts over;
  finished          with the same settings: nothing to do.

RUN/ holds config.json, tokenizer.json, metrics.jsonl (one JSON object per step and per
evaluation), checkpoints/step-XXXXXXXX/ (safetensors weights, optimizer, RNG and data
state) and manifest.json when done. A NaN or infinite loss or gradient norm stops the run
before the update and keeps that step's state in RUN/nonfinite-step-XXXXXXXX/.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mlscale.config import describe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mlscale.train.config import PretrainConfig, preset_names

    parser.add_argument("--data", required=True, type=Path, metavar="TOK",
                        help="token directory made by `mlscale tokenize`")
    parser.add_argument("--out", required=True, type=Path, metavar="RUN", help="run directory")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    parser.add_argument("--preset", metavar="NAME",
                        help=f"start from a shipped preset: {', '.join(preset_names())}")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN from its latest checkpoint")
    parser.add_argument("--force", action="store_true",
                        help="delete RUN first and start over")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train on N processes of this machine: starts torchrun for you "
                        "(same as `torchrun --nproc_per_node=N -m mlscale pretrain ...`); "
                        "choose DDP/FSDP/TP with --parallel.strategy and --parallel.tp")
    rows = describe(PretrainConfig)
    width = max(len(r[0]) for r in rows)
    parser.epilog = "settings (--section.key=value):\n" + "\n".join(
        f"  {key:<{width}}  {default:<10} {help_}" for key, _, default, help_ in rows)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.config import load_config
    from mlscale.errors import ConfigError
    from mlscale.train.config import PretrainConfig, load_preset
    from mlscale.train.loop import pretrain

    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other: --force deletes the run")
    if args.nproc > 1:
        return _launch_torchrun(args, overrides)
    base = load_preset(args.preset) if args.preset else None
    cfg = load_config(PretrainConfig, args.config, overrides, base=base)
    from mlscale.train.parallel import destroy_distributed, launched_by_torchrun

    try:
        summary = pretrain(cfg, args.data, args.out, resume=args.resume, force=args.force)
    except BaseException:
        destroy_distributed(finished=False)
        raise
    destroy_distributed()
    if not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def _launch_torchrun(args: argparse.Namespace, overrides: list[str]) -> int:
    """Re-run this very command under torchrun with N local processes."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.nproc}", "-m", "mlscale", "pretrain",
           "--data", str(args.data), "--out", str(args.out)]
    for flag, value in (("--config", args.config), ("--preset", args.preset)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += ["--resume"] * args.resume + ["--force"] * args.force + list(overrides)
    return subprocess.call(cmd)
