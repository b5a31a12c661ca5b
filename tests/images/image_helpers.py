"""Helpers of the image-stage tests: synthetic pictures, encoded files, IDX files.

A module of its own name: importing them from conftest would find whichever conftest.py
pytest imported first under that name (another folder's)."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image


def picture(seed: int, size: tuple[int, int] = (20, 16), mode: str = "RGB") -> Image.Image:
    """A smooth random picture (distinct per seed; blobs, so JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
    im = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    return im.convert(mode)


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """An IDX file of unsigned bytes (MNIST format)."""
    head = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = head + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path
