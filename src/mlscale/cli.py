"""The `mlscale` command line: one subcommand per pipeline stage.

Thin on purpose: each subcommand lives in its stage's `command` module, which adds its
arguments and maps them onto the stage function. Everything after the known flags that
looks like `--section.key=value` (or `--section.key value`) is a config override.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from mlscale import __version__
from mlscale.errors import MlscaleError

# (subcommand, module, one-line help). Each module defines add_arguments(parser) and
# run(args, overrides) -> int | None. Listed in pipeline order.
COMMANDS: list[tuple[str, str, str]] = [
    ("curate", "mlscale.curate.command", "raw web data -> clean, deduplicated documents"),
    ("tokenize", "mlscale.tokenize.command", "documents -> tokenizer and token shards"),
    ("images", "mlscale.images.command", "image files, IDX, tars, Parquet -> image shards"),
    ("pretrain", "mlscale.train.command", "token shards -> trained LLaMA-style model"),
    ("finetune", "mlscale.finetune.command", "instruction (SFT) or preference (DPO) tuning, LoRA/QLoRA"),
    ("train", "mlscale.train.train_command", "any task on any model family (--task lm|sft|dpo|...)"),
    ("evaluate", "mlscale.evaluate.command", "loss, perplexity and bits per byte of a run"),
    ("generate", "mlscale.evaluate.generate_command", "sample text from a run (KV cache, top-k/top-p)"),
    ("export", "mlscale.export.command", "write a run as a Hugging Face model directory"),
    ("scaling", "mlscale.scaling.command", "sweeps, scaling-law fits and compute-optimal plans"),
    ("run", "mlscale.experiment.command", "the whole chain from one experiment file"),
]

EPILOG = """\
Every stage writes one output directory with a manifest.json; rerunning a finished stage
is a no-op and an interrupted one resumes. Config values come from the dataclass
defaults, then --config FILE (TOML), then --section.key=value overrides.

examples:
  mlscale run                                   # the bundled experiment, end to end
  mlscale curate data/*.warc.gz --out curated
  mlscale tokenize curated --out tokens --vocab-size 8192
  mlscale pretrain --data tokens --out run --train.max_steps=2000
  mlscale train --task lm --data tokens --out run --model.family=llama
  mlscale generate run --prompt "ROMEO:" --top-p 0.9
"""


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            return None  # stage not installed in this build
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlscale",
        description="mlscale: from raw web data to a trained, fine-tuned and evaluated "
        "language model, and the scaling laws of what it trained.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mlscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        mod = _load(module)
        if mod is None:
            continue
        p = sub.add_parser(
            name,
            help=help_text,
            description=(mod.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate `--section.key[=value]` overrides (dotted keys) from ordinary arguments."""
    args, overrides = [], []
    i = 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        key = tok[2:].split("=", 1)[0] if tok.startswith("--") else ""
        if "." in key and not key.startswith("."):
            overrides.append(tok)
            if "=" not in tok and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                overrides.append(argv[i + 1])
                i += 1
        else:
            args.append(tok)
        i += 1
    return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args_only, overrides = split_overrides(argv)
    args, unknown = parser.parse_known_args(args_only)
    if args.command is None:
        parser.print_help()
        return 0
    for tok in unknown:
        if not tok.startswith("--"):
            parser.error(f"unrecognized argument: {tok}")
    overrides += unknown
    try:
        rc = args._module.run(args, overrides)
        return int(rc or 0)
    except MlscaleError as e:
        print(f"mlscale {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"\nmlscale {args.command}: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
