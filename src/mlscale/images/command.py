"""Decode image inputs into fixed-shape uint8 shards that training reads memory-mapped.

INPUT is any mix of: IDX files or a folder of them (MNIST format, .gz or not:
*images-idx3-ubyte paired with *labels-idx1-ubyte of the same prefix), ImageFolder trees
(DIR/<class>/<image>, optionally under train/ val/ test/), CSV files (filepath,caption
[,label]), WebDataset tar shards (key.jpg|png|webp with key.cls, key.txt or key.json) and
Parquet files with an image column (Hugging Face's {bytes, path} struct or binary) and
label and/or caption columns. Every image is decoded with Pillow into one shape
(--images.size, --images.mode); the dataset's own split is kept (its test split becomes
val), else images are split by a hash of their id. Exact duplicates (same pixels) and near
duplicates (perceptual hash, verified on the pixels) are removed; so are images that do
not decode. Every image read ends kept or in DIR/removed/ with its reason.

Output: DIR/{train,val}-NNNNN.images.npy (uint8 [n,H,W,C]), .labels.npy (int64, -1 =
none), .meta.parquet (id, source, caption, width, height), DIR/classes.json,
DIR/removed/, DIR/report.html, DIR/manifest.json (written last). Read it in Python with
mlscale.images.ImageData(DIR).

An interrupted run resumes from its finished work units when run again; a finished one
is not redone; other settings on an existing DIR are an error unless --force.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

EPILOG = """\
examples:
  mlscale images /usr/share/datasets/fashion-mnist --out fm      # Fashion-MNIST IDX files
  mlscale images photos/ --out pets --images.size=64 --images.mode=RGB   # ImageFolder
  mlscale images shards/*.tar --out web --workers 8 --on-error fail
  mlscale images train.parquet test.parquet --out hf --dedup.near_radius=-1
  mlscale images captions.csv --out pairs --split.val_fraction=0.05
  mlscale images data/ --out imgs --executor ray --ray.address=auto

settings (--section.key=value, or a TOML file given to --config):
  images.size=0        0 keeps the native size (all images must agree); N resizes the
                       shorter side to N and center-crops N x N
  images.mode=auto     L (grey), RGB, or auto (L when every image is grey)
  split.val_fraction=0.1, split.seed=0       for inputs without a split of their own
  dedup.exact=true, dedup.near_radius=4, dedup.near_max_diff=0.02
  shards.images=50000  images per shard file; shards.unit_images=10000 per work unit
An unknown key is an error that suggests the closest one. --workers, --executor,
--ray.address and --on-error may change when resuming; other settings need --force.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="IDX files, image folders, .csv, .tar or .parquet files (folders are "
                        "searched recursively)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes (default: all cores; 1 runs in this process)")
    parser.add_argument("--executor", choices=("local", "ray"),
                        help="local processes (default) or Ray (DIR must be on storage all nodes see)")
    parser.add_argument("--on-error", dest="on_error", choices=("skip", "fail"),
                        help="an image that does not decode or a tar member without its label: "
                        "record it in removed/ and go on (default), or stop naming the file")
    parser.add_argument("--force", action="store_true", help="delete DIR and start over")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from mlscale.config import load_config, merge, parse_overrides
    from mlscale.images.config import ImagesConfig
    from mlscale.images.stage import build_images

    flags: dict[str, Any] = {k: getattr(args, k) for k in ("workers", "executor", "on_error")
                             if getattr(args, k) is not None}
    cfg = load_config(ImagesConfig, args.config, merge(parse_overrides(overrides), flags))
    finished_before = (Path(args.out) / "manifest.json").exists() and not args.force
    m = build_images(args.inputs, args.out, cfg, force=args.force, progress=not args.quiet)
    c = m["counts"]
    removed = ", ".join(f"{n:,} {r}" for r, n in sorted(c["removed"].items())) or "none"
    print(f"{c['read']:,} images read, {c['kept']:,} kept, removed: {removed}")
    for name, s in m["splits"].items():
        print(f"{name:>5}: {s['images']:,} images in {len(s['shards'])} shard(s)")
    n = len(m["classes"])
    print(f"shape {tuple(m['image_shape'])}, {n} class{'' if n == 1 else 'es'} -> {args.out} "
          f"(report: {Path(args.out) / 'report.html'})")
    print(json.dumps({"seconds": m["seconds"], **m["timings"]}))
    if finished_before:
        print(f"{args.out} was already complete with these settings: nothing to do (--force starts over)")
    return 0
