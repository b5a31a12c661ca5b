"""Writing and reading one image shard: `{split}-{k:05d}.images.npy|labels.npy|meta.parquet`.

Each file is written atomically; the shard's work unit is marked done only after all
three exist, so an interrupted stage rewrites at most the shard it was in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlscale.artifacts import atomic_path
from mlscale.errors import ArtifactError

SPLITS = ("train", "val")
IMAGES, LABELS, META = ".images.npy", ".labels.npy", ".meta.parquet"

META_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("caption", pa.string(), nullable=True),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
])


def shard_name(split: str, k: int) -> str:
    """`train-00003`: the common stem of a shard's three files."""
    return f"{split}-{k:05d}"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to a name
            np.save(fh, arr, allow_pickle=False)


def write_shard(out: str | Path, split: str, k: int, images: np.ndarray, labels: np.ndarray,
                meta: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Write shard `k` of `split`: images uint8 [n,H,W,C], labels int64 [n], meta rows
    (id, source, caption, width, height). Returns its manifest entry."""
    out = Path(out)
    name = shard_name(split, k)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or len(images) != len(labels) or len(labels) != len(meta):
        raise ValueError(f"shard {name}: images {images.shape}, {len(labels)} labels, "
                         f"{len(meta)} meta rows do not agree")
    _save_npy(out / (name + IMAGES), images)
    _save_npy(out / (name + LABELS), labels)
    table = pa.Table.from_pylist([dict(r) for r in meta], schema=META_SCHEMA)
    with atomic_path(out / (name + META)) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return {"name": name, "images": int(len(images))}


def _redo(path: Path) -> str:
    return (f"{path} is missing or damaged; rerun `mlscale images ... --out {path.parent} --force`")


def open_images(path: Path, count: int) -> np.ndarray:
    """The images of one shard, memory-mapped read-only, checked against its recorded count."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{_redo(path)} ({e})") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or len(arr) != count:
        raise ArtifactError(f"{_redo(path)} (holds {arr.dtype} {arr.shape}, expected {count} images)")
    return arr


def read_labels(path: Path, count: int) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{_redo(path)} ({e})") from None
    if arr.dtype != np.int64 or arr.shape != (count,):
        raise ArtifactError(f"{_redo(path)} (holds {arr.dtype} {arr.shape}, expected {count} labels)")
    return arr


def read_meta(path: Path, count: int) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ArtifactError(f"{_redo(path)} ({e})") from None
    if table.num_rows != count:
        raise ArtifactError(f"{_redo(path)} (holds {table.num_rows} rows, expected {count})")
    return table
