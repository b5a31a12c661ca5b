"""Raw web data to a clean, deduplicated corpus.

Reads JSONL (.jsonl, .jsonl.gz, .jsonl.zst), Parquet, WARC (.warc, .warc.gz) and folders
of .txt / .html files, then runs, in order: extract (HTML to main text), language
(identification; keep-list and threshold), quality (Gopher quality and repetition, C4,
FineWeb rules), exact (duplicates by a hash of normalised text) and near (MinHash LSH
near duplicates). Every input record ends either in OUT/kept or in OUT/removed with its
step and reason; OUT/report.html shows the funnel, and OUT/manifest.json the counts.

The run is cut into work units; an interrupted run resumes where it stopped when the same
command is run again, and a finished one is not redone. The output is the same whatever
the executor and the number of workers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  mlscale curate --sample --out curated              # the bundled sample corpus
  mlscale curate ../shared/data/commoncrawl --out curated
  mlscale curate crawl/*.warc.gz docs.jsonl.zst --out curated --workers 8
  mlscale curate data/ --out curated --steps extract,language,quality   # no dedup
  mlscale curate data/ --out curated --language.languages=en,de --language.threshold=0.5
  mlscale curate data/ --out curated --near.threshold=0.7 --near.verify=false
  mlscale curate data/ --out curated --executor ray --ray.address=auto
  mlscale curate bad.jsonl --out curated --on-error skip   # record malformed lines, go on
  mlscale curate data/ --out curated --config curate.toml --force   # start over

settings: any key of the config can be set with --section.key=value (or in the TOML file
given to --config), e.g. --read.text_field=content, --quality.c4.enabled=false,
--shard.input_bytes=8000000; an unknown key is an error that suggests the closest one.
Settings that change the output cannot change on an existing --out without --force;
--workers, --executor, --ray.address and --on-error can.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="input files or folders (folders are searched recursively)")
    parser.add_argument("--sample", action="store_true",
                        help="curate the bundled sample corpus (a few hundred real documents: "
                        "crawled pages, HTML documentation, the Debian Reference in four "
                        "languages) instead of INPUT")
    parser.add_argument("--out", required=True, metavar="OUT", help="output directory")
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings")
    parser.add_argument("--steps", metavar="LIST",
                        help="comma-separated steps to run, from extract,language,quality,"
                        "exact,near (default: all; reading is implied)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes (default: all cores; 1 runs in this process)")
    parser.add_argument("--executor", choices=("local", "ray"),
                        help="local processes (default) or Ray (--ray.address ADDR to join a "
                        "cluster; the output folder must be on storage all nodes see)")
    parser.add_argument("--on-error", dest="on_error", choices=("fail", "skip"),
                        help="a malformed record: fail naming file and line (default), or skip "
                        "it, recording reason 'malformed' in removed/")
    parser.add_argument("--force", action="store_true",
                        help="delete OUT and start over (needed to change settings on an "
                        "existing OUT)")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.config import load_config, parse_overrides, merge
    from mlscale.curate.config import CurateConfig
    from mlscale.curate.pipeline import curate
    from mlscale.curate.report import summary_lines
    from mlscale.errors import InputError

    if args.sample and args.inputs:
        raise InputError("give either INPUT files or --sample, not both")
    if args.sample:
        from mlscale.data import bundled_corpus

        inputs: list[Any] = list(bundled_corpus())
    elif args.inputs:
        inputs = list(args.inputs)
    else:
        raise InputError("no input given: name input files or folders, or use --sample for "
                         "the bundled sample corpus (see mlscale curate --help)")
    flags: dict[str, Any] = {}
    for key in ("steps", "workers", "executor", "on_error"):
        value = getattr(args, key)
        if value is not None:
            flags[key] = value
    cfg = load_config(CurateConfig, args.config, merge(parse_overrides(overrides), flags))
    finished_before = (Path(args.out) / "manifest.json").exists() and not args.force
    manifest = curate(inputs, args.out, cfg, force=args.force)
    print("\n".join(summary_lines(manifest, args.out)), file=sys.stdout)
    if finished_before:
        print(f"{args.out} was already complete with these settings: nothing to do "
              "(--force starts over)")
    return 0
