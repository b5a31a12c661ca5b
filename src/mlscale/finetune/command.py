"""Fine-tune a model on instructions (SFT) or preferences (DPO): full, LoRA or QLoRA.

BASE is a `mlscale pretrain` run directory or a Hugging Face Llama directory
(config.json, model.safetensors, tokenizer.json). --data is JSONL in one of these forms:
  {"instruction", "input", "output"}           Alpaca
  {"instruction", "instances": [{input, output}]}  self-instruct seed tasks
  {"messages": [{"role", "content"}, ...]}     chat
  {"prompt", "completion"}                     prompt/completion
  {"prompt", "chosen", "rejected"}             preference pairs, for --objective dpo

Every turn is rendered with one prompt template (template.text, recorded with the
adapter); prompt tokens are masked out of the loss and examples are packed into rows.
--method lora/qlora trains adapters only (qlora on a frozen NF4 4-bit base) and writes
FT/adapter/ in PEFT's layout; full trains every weight and writes FT/model.safetensors.
It runs in the one trainer as the sft or dpo task (`mlscale train --task sft|dpo
--base BASE` is the same), so it has pretraining's checkpoints (FT/checkpoints/),
exact resume and --nproc N / torchrun with DDP (or --parallel.strategy=fsdp).
Rerunning the same command (or with --resume) resumes an interrupted run; `mlscale
generate FT` and `mlscale evaluate FT --data FILE` use the fine-tuned model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mlscale.finetune.config import FINETUNE_DEFAULTS, METHODS, OBJECTIVES, FinetuneConfig
    from mlscale.train.launch import add_run_arguments, settings_table

    parser.add_argument("base", type=Path, metavar="BASE",
                        help="mlscale run directory or Hugging Face Llama directory")
    parser.add_argument("--data", required=True, type=Path, metavar="FILE", help="training data (JSONL)")
    parser.add_argument("--out", required=True, type=Path, metavar="FT", help="output directory")
    parser.add_argument("--method", choices=METHODS, help="full | lora | qlora (default lora)")
    parser.add_argument("--objective", choices=OBJECTIVES, help="sft | dpo (default sft)")
    add_run_arguments(parser, "fine-tuning run", presets=False)
    # fine-tuning's own defaults replace pretraining's in the table
    parser.epilog = settings_table(FinetuneConfig, FINETUNE_DEFAULTS)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.config import from_dict
    from mlscale.finetune.config import FINETUNE_DEFAULTS, FinetuneConfig
    from mlscale.finetune.loop import finetune
    from mlscale.train.launch import passthrough_argv, raw_settings, relaunch, run_and_report

    flags = {k: v for k, v in (("method", args.method), ("objective", args.objective)) if v}
    raw = raw_settings(args, overrides, defaults=FINETUNE_DEFAULTS)
    if args.nproc > 1:
        return relaunch(args.nproc, passthrough_argv(
            args, ["finetune", str(args.base), "--data", str(args.data), "--out", str(args.out)],
            ("--method", "--objective", "--config", "--resume", "--force"), overrides))
    cfg = from_dict(FinetuneConfig, {**raw, **flags})
    return run_and_report(lambda: finetune(cfg, args.base, args.data, args.out, force=args.force))
