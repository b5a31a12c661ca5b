"""Train a tokenizer (byte-level BPE or characters) and write token shards.

INPUT is a curated directory (its kept/*.parquet), Parquet files, JSONL files
(.jsonl, .jsonl.gz, .jsonl.zst) or plain text. Documents go whole to train or val by a
hash of their id; a single plain-text file is split by position as nanoGPT does (the first
90% of its characters train, the rest val, no eos). Output: TOK/tokenizer.json, TOK/train-*.bin
and TOK/val-*.bin (uint16/uint32 token ids), TOK/manifest.json.

examples:
  mlscale tokenize curated --out tokens --vocab-size 8192
  mlscale tokenize input.txt --out shakespeare-char --tokenizer char
  mlscale tokenize docs.jsonl.zst --out tokens --input.text_field=content --workers 4
"""
from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="curated directory, .parquet, .jsonl[.gz|.zst] or .txt files")
    p.add_argument("--out", required=True, metavar="TOK", help="output directory")
    p.add_argument("--config", metavar="FILE", help="TOML file with [tokenizer], [input], [split], [shards]")
    p.add_argument("--tokenizer", choices=("bpe", "char"), help="tokenizer.kind (default bpe)")
    p.add_argument("--vocab-size", type=int, metavar="N", help="tokenizer.vocab_size for BPE (default 8192)")
    p.add_argument("--val-fraction", type=float, metavar="F", help="split.val_fraction (default 0.1)")
    p.add_argument("--workers", type=int, metavar="N", help="shards.workers: encoding processes (0 = all cores)")
    p.add_argument("--force", action="store_true", help="delete TOK and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The convenience flags as config values (they win over --config, lose to --section.key)."""
    out: dict[str, Any] = {}
    pairs = [("tokenizer", "kind", args.tokenizer), ("tokenizer", "vocab_size", args.vocab_size),
             ("split", "val_fraction", args.val_fraction), ("shards", "workers", args.workers)]
    for section, key, value in pairs:
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.config import load_config, merge, parse_overrides
    from mlscale.tokenize.config import TokenizeConfig
    from mlscale.tokenize.stage import tokenize_corpus

    cfg = load_config(TokenizeConfig, args.config, merge(flag_overrides(args), parse_overrides(overrides)))
    m = tokenize_corpus(args.inputs, args.out, cfg, force=args.force, progress=not args.quiet)
    tok = m["tokenizer"]
    print(f"tokenizer: {tok['kind']}, vocab {tok['vocab_size']}, dtype {m['dtype']} -> {args.out}")
    for name, s in m["splits"].items():
        bpt = f"{s['bytes_per_token']:.3f}" if s["bytes_per_token"] else "n/a"
        print(f"{name:>5}: {s['tokens']:,} tokens, {s['documents']:,} documents, {s['bytes']:,} bytes, "
              f"{bpt} bytes/token, {len(s['shards'])} shard(s)")
    print(json.dumps({"seconds": m["seconds"], "tokenizer_seconds": m.get("tokenizer_seconds"),
                      "encode_seconds": m.get("encode_seconds")}))
    return 0
