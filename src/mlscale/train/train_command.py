"""Train any task on any model family: the general form of pretrain and finetune.

    mlscale train --task lm --data tokens --out run --preset nanogpt-shakespeare-char
    mlscale train --task sft --base run --data alpaca.jsonl --out ft --lora.r=16
    mlscale train --task dpo --base run --data prefs.jsonl --out dpo --nproc 2
    mlscale train --preset vit-fashion-mnist --data fm --out vit
    mlscale train --task dino --data fm --out dino --dino.local_crops=4

--task names what is learnt (lm: next-token prediction on token shards; sft and dpo:
fine-tuning a --base model on instructions or preferences; classify: image classes;
simclr, dino, mae: self-supervised image features, no labels read; more tasks register
as they ship); `model.family` names the model (llama, vit, ...). A preset or --config file may name
both (`task = "lm"`, `[model] family = "llama"`). Settings come from the task's
defaults, then --preset, then --config FILE, then --section.key=value overrides; an
unknown key is an error naming the closest one. The output directory follows
`mlscale pretrain`'s rules: --resume continues it, --force starts over, a finished run
with the same settings is left alone.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mlscale.model.registry import family_names
    from mlscale.train.launch import add_run_arguments
    from mlscale.train.task import task_names

    parser.add_argument("--task", metavar="TASK",
                        help=f"what to learn: {', '.join(task_names())} (or `task` in the preset/config)")
    parser.add_argument("--data", required=True, type=Path, metavar="DATA",
                        help="the task's data: a token directory (lm), a JSONL file (sft, dpo), ...")
    parser.add_argument("--out", required=True, type=Path, metavar="RUN", help="run directory")
    parser.add_argument("--base", type=Path, metavar="BASE",
                        help="fine-tuning tasks: the mlscale run or Hugging Face directory to start from")
    add_run_arguments(parser, "run")
    parser.epilog = (f"tasks: {', '.join(task_names())}\nmodel families (model.family): "
                     f"{', '.join(family_names())}\n`mlscale pretrain --help` and "
                     "`mlscale finetune --help` list the settings of lm and sft/dpo.")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.errors import ConfigError
    from mlscale.train.launch import passthrough_argv, raw_settings, relaunch, run_and_report
    from mlscale.train.loop import run_task
    from mlscale.train.task import get_task

    raw = raw_settings(args, overrides)
    if args.nproc > 1:
        return relaunch(args.nproc, passthrough_argv(
            args, ["train", "--data", str(args.data), "--out", str(args.out)],
            ("--task", "--base", "--config", "--preset", "--resume", "--force"), overrides))
    name = args.task or raw.pop("task", None)
    raw.pop("task", None)
    if not name:
        raise ConfigError("no task: pass --task (e.g. --task lm) or set `task` in the preset or config file")
    task_cls = get_task(name)
    cfg = task_cls.make_config(raw)
    if task_cls.needs_base and args.base is None:
        raise ConfigError(f"task {name} fine-tunes a model: pass --base RUN_OR_HF_DIR")
    return run_and_report(lambda: run_task(name, cfg, args.data, args.out, resume=args.resume,
                                           force=args.force, base=args.base))
