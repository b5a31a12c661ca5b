"""Reading an `mlscale images` output: `ImageData(DIR)` for tasks and evaluation.

    data = ImageData("fm")
    data.classes                 # ["T-shirt/top", ...]
    data.shape                   # (28, 28, 1)
    train = data.split("train")
    x = train.images[idx]        # uint8 [len(idx), H, W, C], memory-mapped shards
    y = train.labels[idx]        # int64, -1 where unlabelled
    train.meta()                 # pyarrow table: id, source, caption, width, height
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mlscale.artifacts import MANIFEST, read_json
from mlscale.errors import ArtifactError
from mlscale.images.shards import IMAGES, LABELS, META, META_SCHEMA, SPLITS, open_images, read_labels, read_meta

STAGE_NAME = "images"
FORMAT = "mlscale-images-v1"
CLASSES = "classes.json"


class ShardedImages:
    """Several uint8 [n, H, W, C] shards seen as one read-only [N, H, W, C] array (no copy).

    Supports `len`, `.shape`, integer and slice indexing, and fancy indexing with an
    integer array (any shape: the result is idx.shape + (H, W, C)).
    """

    def __init__(self, shards: list[np.ndarray], item_shape: tuple[int, ...]):
        self.shards = [s for s in shards if len(s)]
        self.item_shape = tuple(item_shape)
        self.dtype = np.dtype(np.uint8)
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.ndim = 1 + len(self.item_shape)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.item_shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return self[np.arange(*key.indices(n))]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} images")
            k = int(np.searchsorted(self.starts, i, side="right")) - 1
            return self.shards[k][i - self.starts[k]]
        idx = np.asarray(key)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"unsupported index {key!r}")
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        out = np.empty(idx.shape + self.item_shape, dtype=self.dtype)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.shards[k][idx[sel] - self.starts[k]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[np.arange(len(self))]
        return arr.astype(dtype) if dtype is not None else arr


class ImageSplit:
    """One split of an images output: `len()`, `.images`, `.labels`, `.meta()`."""

    def __init__(self, root: Path, name: str, info: dict[str, Any], shape: tuple[int, int, int]):
        self.root, self.name, self.shape = root, name, shape
        self.shards: list[dict[str, Any]] = list(info.get("shards", []))
        self._images: np.ndarray | ShardedImages | None = None
        self._labels: np.ndarray | None = None
        self._meta: pa.Table | None = None

    def __len__(self) -> int:
        return sum(int(s["images"]) for s in self.shards)

    @property
    def images(self) -> np.ndarray | ShardedImages:
        """uint8 [N, H, W, C] over every shard, memory-mapped (a numpy memmap if one shard)."""
        if self._images is None:
            arrays = [open_images(self.root / (s["name"] + IMAGES), int(s["images"])) for s in self.shards]
            for s, a in zip(self.shards, arrays):
                if tuple(a.shape[1:]) != self.shape:
                    raise ArtifactError(f"{self.root / (s['name'] + IMAGES)} holds images of shape "
                                        f"{a.shape[1:]}, not {self.shape}; rerun `mlscale images --force`")
            if len(arrays) == 1:
                self._images = arrays[0]
            else:
                self._images = ShardedImages(arrays, self.shape)
        return self._images

    @property
    def labels(self) -> np.ndarray:
        """int64 [N] class indices (-1 where an image has no label)."""
        if self._labels is None:
            parts = [read_labels(self.root / (s["name"] + LABELS), int(s["images"])) for s in self.shards]
            self._labels = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return self._labels

    def meta(self) -> pa.Table:
        """id, source, caption (null when none), width, height of every image (read on first call)."""
        if self._meta is None:
            parts = [read_meta(self.root / (s["name"] + META), int(s["images"])) for s in self.shards]
            self._meta = pa.concat_tables(parts) if parts else META_SCHEMA.empty_table()
        return self._meta

    def __repr__(self) -> str:
        return f"ImageSplit({self.name!r}, {len(self):,} images of {self.shape})"


class ImageData:
    """A finished `mlscale images` output directory: classes, image shape and splits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            what = "is unfinished (no manifest.json)" if (self.path / "stage.json").exists() else \
                "is not a `mlscale images` output (no manifest.json)"
            raise ArtifactError(f"{self.path} {what}; run `mlscale images INPUT... --out {self.path}`")
        manifest = read_json(mpath, "images manifest", f"run `mlscale images ... --out {self.path} --force`")
        self.manifest: dict[str, Any] = manifest if isinstance(manifest, dict) else {}
        if self.manifest.get("stage") != STAGE_NAME or "splits" not in self.manifest:
            raise ArtifactError(f"{mpath} is not the manifest of a `mlscale images` output")
        classes = read_json(self.path / CLASSES, "class list", f"rerun `mlscale images ... --out {self.path} --force`")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ArtifactError(f"{self.path / CLASSES} is not a JSON list of class names")
        self.classes: list[str] = classes
        self.shape: tuple[int, int, int] = tuple(int(v) for v in self.manifest["image_shape"])  # type: ignore[assignment]
        self._splits: dict[str, ImageSplit] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> ImageSplit:
        """Split `name` ("train" or "val")."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        if name not in self._splits:
            info = self.manifest["splits"].get(name, {"shards": []})
            self._splits[name] = ImageSplit(self.path, name, info, self.shape)
        return self._splits[name]

    def __repr__(self) -> str:
        parts = ", ".join(f"{s}={len(self.split(s)):,}" for s in SPLITS)
        return f"ImageData({str(self.path)!r}, {len(self.classes)} classes, shape {self.shape}, {parts})"


def write_classes(out: str | Path, classes: list[str]) -> None:
    """DIR/classes.json: the class names, index = label."""
    from mlscale.artifacts import atomic_write_text

    atomic_write_text(Path(out) / CLASSES, json.dumps(list(classes), ensure_ascii=False) + "\n")
