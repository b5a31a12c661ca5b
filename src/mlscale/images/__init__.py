"""Image data: `mlscale images INPUT... --out DIR` and the reader of what it writes.

    from mlscale.images import ImageData, build_images, ImagesConfig

The output directory (format "mlscale-images-v1"; a contract that tasks read):

    DIR/classes.json                 ["T-shirt/top", ...] (index = label), [] when unlabelled
    DIR/{split}-{k:05d}.images.npy   uint8 [n, H, W, C] (np.save format, memory-mappable;
                                     every image of the stage has the same H, W, C after
                                     the resize/crop policy)
    DIR/{split}-{k:05d}.labels.npy   int64 [n] (-1 where an image has no label)
    DIR/{split}-{k:05d}.meta.parquet id, source, caption (null when none), width, height
                                     (the original size, before resize/crop)
    DIR/removed/part-*.parquet       id, source, step, reason, duplicate_of
    DIR/manifest.json                config, input fingerprints, counts per split and per
                                     class, read = kept + removed per reason, image shape,
                                     timings; written last
    DIR/report.html                  self-contained

Splits are "train" and "val": the dataset's own test split becomes "val"; inputs without
a split are split by a hash of the image id (`split.val_fraction`, default 0.1).
Duplicates keep the val copy (val ranks before train, then input order), so train loses
what would leak into evaluation.

manifest.json keys (besides stage, config, inputs, environment, seconds, finished):
format "mlscale-images-v1"; image_shape [H, W, C]; classes; counts {read, kept, removed:
{reason: n}} with read == kept + sum(removed); splits {train|val: {images, per_class:
{class: n}, unlabelled, shards: [{name: "train-00000", images: n}]}}; duplicates {exact,
near, near_candidates}; sources; work_units; execution {executor, workers}; timings
{decode, gather_dedup, write} in seconds.

Names are imported on first use so that `mlscale --help` does not load numpy or Pillow.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageData": "mlscale.images.data",
    "ImageSplit": "mlscale.images.data",
    "ImagesConfig": "mlscale.images.config",
    "build_images": "mlscale.images.stage",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlscale.images' has no attribute {name!r}")
