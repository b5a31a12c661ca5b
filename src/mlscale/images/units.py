"""One work unit: read a slice of an input, decode every image, write it under DIR/.work.

    DIR/.work/u{i:05d}.npy       uint8 [n, H, W, C] of the unit's decoded images
    DIR/.work/u{i:05d}.parquet   id, source, caption, width, height, label, split, xhash, phash

The function returns the unit's removals and facts; the stage records them in the unit's
completion marker, so a resumed run reads finished units back instead of decoding again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlscale.artifacts import atomic_path
from mlscale.errors import ConfigError, InputError
from mlscale.images.decode import Decoded, decode, exact_hash, phash
from mlscale.images.readers import Unit, class_order, read_unit

WORK = ".work"

UNIT_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("caption", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("label", pa.string()), ("split", pa.string()),
    ("xhash", pa.int64()), ("phash", pa.int64()),
])


def unit_paths(out: str | Path, index: int) -> tuple[Path, Path]:
    base = Path(out) / WORK / f"u{index:05d}"
    return base.with_suffix(".npy"), base.with_suffix(".parquet")


def _unify(decoded: list[Decoded], ids: list[str], size: int) -> np.ndarray:
    """Stack the unit's images: grey ones repeat to RGB when the unit has colour; sizes
    must agree when images.size is 0."""
    if not decoded:
        return np.zeros((0, 0, 0, 0), dtype=np.uint8)
    first = decoded[0].pixels.shape[:2]
    for d, i in zip(decoded, ids):
        if d.pixels.shape[:2] != first:
            raise ConfigError(f"images differ in size ({ids[0]} is {first[1]}x{first[0]}, {i} is "
                              f"{d.pixels.shape[1]}x{d.pixels.shape[0]}): set --images.size=N to "
                              "resize and center-crop every image to N x N")
    channels = max(d.pixels.shape[2] for d in decoded)
    return np.stack([np.repeat(d.pixels, channels, axis=2) if d.pixels.shape[2] < channels else d.pixels
                     for d in decoded])


def process_unit(context: dict[str, Any], task: tuple[int, Unit]) -> dict[str, Any]:
    """Decode unit `task` = (index, unit); write its images and rows; return its record."""
    index, unit = task
    size, mode, fail = context["size"], context["mode"], context["on_error"] == "fail"
    decoded: list[Decoded] = []
    rows: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    read = 0
    for item in read_unit(unit):
        read += 1
        got = decode(item, size, mode)
        if isinstance(got, tuple):
            if fail:
                raise InputError(f"{item.source}: {got[1]} (--on-error skip records it in removed/ "
                                 "and goes on)")
            removed.append({"id": item.id, "source": item.source, "step": got[0], "reason": got[1],
                            "duplicate_of": None})
            continue
        decoded.append(got)
        rows.append({"id": item.id, "source": item.source, "caption": item.caption, "width": got.width,
                     "height": got.height, "label": item.label, "split": item.split,
                     "xhash": exact_hash(got.pixels)})
    images = _unify(decoded, [r["id"] for r in rows], size)
    hashes = phash(np.stack([d.grey32 for d in decoded])) if decoded else np.zeros(0, np.int64)
    for r, h in zip(rows, hashes):
        r["phash"] = int(h)
    npy, table = unit_paths(context["out"], index)
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, images, allow_pickle=False)
    with atomic_path(table) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=UNIT_SCHEMA), tmp, compression="zstd")
    return {"read": read, "kept": len(rows), "shape": list(images.shape[1:]) if rows else None,
            "removed": removed, "classes": class_order(unit)}
