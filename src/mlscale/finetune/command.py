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
Rerunning the same command resumes an interrupted run; `mlscale generate FT` and
`mlscale evaluate FT --data FILE` use the fine-tuned model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlscale.config import describe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mlscale.finetune.config import FINETUNE_DEFAULTS, METHODS, OBJECTIVES, FinetuneConfig

    parser.add_argument("base", type=Path, metavar="BASE",
                        help="mlscale run directory or Hugging Face Llama directory")
    parser.add_argument("--data", required=True, type=Path, metavar="FILE", help="training data (JSONL)")
    parser.add_argument("--out", required=True, type=Path, metavar="FT", help="output directory")
    parser.add_argument("--method", choices=METHODS, help="full | lora | qlora (default lora)")
    parser.add_argument("--objective", choices=OBJECTIVES, help="sft | dpo (default sft)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    parser.add_argument("--force", action="store_true", help="delete FT first and start over")
    # fine-tuning's own defaults replace pretraining's in the table
    own = {f"{section}.{key}": repr(value) for section, values in FINETUNE_DEFAULTS.items()
           for key, value in values.items()}
    rows = [(key, tp, own.get(key, default), help_) for key, tp, default, help_ in describe(FinetuneConfig)]
    width = max(len(r[0]) for r in rows)
    parser.epilog = "settings (--section.key=value; train.* as in pretrain):\n" + "\n".join(
        f"  {key:<{width}}  {default:<10} {help_.splitlines()[0] if help_ else ''}"
        for key, _, default, help_ in rows)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.config import load_config, merge, parse_overrides
    from mlscale.finetune.config import FINETUNE_DEFAULTS, FinetuneConfig
    from mlscale.finetune.loop import finetune

    flags = {k: v for k, v in (("method", args.method), ("objective", args.objective)) if v}
    ov = merge(parse_overrides(overrides), flags)
    cfg = load_config(FinetuneConfig, args.config, ov, base=FINETUNE_DEFAULTS)
    summary = finetune(cfg, args.base, args.data, args.out, force=args.force)
    print(json.dumps(summary, indent=2))
    return 0
