"""The configuration reference of the README, generated from the config dataclasses.

    python -m mlscale.reference          # print the markdown
    python -m mlscale.reference --write  # refresh the block between the markers in README.md

A test keeps README.md in sync with the code, so the table never lies.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

from mlscale.config import describe

# (stage, "module:ConfigClass"): the config of each stage command, in pipeline order
STAGE_CONFIGS = [
    ("curate", "mlscale.curate.config:CurateConfig"),
    ("tokenize", "mlscale.tokenize.config:TokenizeConfig"),
    ("pretrain", "mlscale.train.config:PretrainConfig"),
    ("finetune", "mlscale.finetune.config:FinetuneConfig"),
    ("images", "mlscale.images.config:ImagesConfig"),
    ("train --task classify", "mlscale.tasks.classify:ClassifyConfig"),
    ("train --task simclr", "mlscale.tasks.selfsup.simclr:SimCLRConfig"),
    ("train --task dino", "mlscale.tasks.selfsup.dino:DINOConfig"),
    ("train --task mae", "mlscale.tasks.selfsup.mae:MAEConfig"),
]
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def _cls(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """Markdown: one table per stage, one row per key (key, type, default, meaning)."""
    parts = []
    for stage, path in STAGE_CONFIGS:
        parts.append(f"### `mlscale {stage}`\n")
        parts.append("| key | type | default | meaning |\n|---|---|---|---|")
        for key, tname, default, help_text in describe(_cls(path)):
            parts.append(f"| `{key}` | {_cell(tname)} | `{_cell(default)}` | {_cell(help_text)} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def replace_block(readme: str, block: str) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README has no {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n{block}{END}", readme)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="update README.md in place")
    ap.add_argument("--readme", default="README.md")
    args = ap.parse_args(argv)
    block = render()
    if args.write:
        p = Path(args.readme)
        p.write_text(replace_block(p.read_text(), block))
    else:
        sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
