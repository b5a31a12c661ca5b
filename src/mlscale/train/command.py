"""Pretrain a LLaMA-style decoder on the token shards of `mlscale tokenize`.

The language-model task (`mlscale train --task lm`) under its own name. Settings come
from the defaults, then --preset, then --config FILE, then --section.key=value overrides
(e.g. --train.max_steps=500 --model.d_model=256).

The run directory (--out):
  new or empty      a run starts there;
  holds a run       refused, so nothing is overwritten by accident, unless
    --resume        continues from its latest checkpoint (the same batches follow, so the
                    losses are those of an uninterrupted run). Only these settings may
                    change on resume: train.max_steps, eval_every, eval_batches,
                    checkpoint_every, keep_checkpoints, log_every, log_to, compile, device,
                    threads, activation_checkpointing, batch_size (same global batch) and
                    parallel.*; another model shape, tokenizer or optimiser setting is refused;
    --force         deletes it and starts over;
  finished          with the same settings: nothing to do.

RUN/ holds config.json, tokenizer.json, metrics.jsonl (one JSON object per step and per
evaluation), checkpoints/step-XXXXXXXX/ (safetensors weights, optimizer, RNG and data
state) and manifest.json when done. A NaN or infinite loss or gradient norm stops the run
before the update and keeps that step's state in RUN/nonfinite-step-XXXXXXXX/.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mlscale.train.config import PretrainConfig
    from mlscale.train.launch import add_run_arguments, settings_table

    parser.add_argument("--data", required=True, type=Path, metavar="TOK",
                        help="token directory made by `mlscale tokenize`")
    parser.add_argument("--out", required=True, type=Path, metavar="RUN", help="run directory")
    add_run_arguments(parser, "run")
    parser.epilog = settings_table(PretrainConfig)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.config import from_dict
    from mlscale.errors import ConfigError
    from mlscale.train.config import PretrainConfig
    from mlscale.train.launch import passthrough_argv, raw_settings, relaunch, run_and_report
    from mlscale.train.loop import pretrain

    raw = raw_settings(args, overrides)
    if args.nproc > 1:
        return relaunch(args.nproc, passthrough_argv(
            args, ["pretrain", "--data", str(args.data), "--out", str(args.out)],
            ("--config", "--preset", "--resume", "--force"), overrides))
    task = raw.pop("task", "lm")
    if task != "lm":
        raise ConfigError(f"pretrain trains the lm task, the settings name task '{task}': "
                          f"run `mlscale train --task {task} ...` instead")
    cfg = from_dict(PretrainConfig, raw)
    return run_and_report(lambda: pretrain(cfg, args.data, args.out, resume=args.resume, force=args.force))
