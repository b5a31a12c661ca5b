"""Decoding one image with Pillow into the stage's shape, and the hashes dedup compares.

    decode(item, size, mode) -> Decoded | (step, reason)
    exact_hash(pixels)       xxh3-64 of the decoded pixels and their shape
    phash(grey32)            64-bit DCT perceptual hash (pHash) of 32x32 grey thumbnails

Resize policy: size 0 keeps the native size; size N resizes the shorter side to N
(bicubic, antialiased) and center-crops N x N. Mode L gives 1 channel, RGB 3 (transparent
pixels over white); auto keeps grey images grey and turns everything else into RGB. An
EXIF orientation is applied first, so photos are upright.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import xxhash
from PIL import Image, ImageOps, UnidentifiedImageError

from mlscale.images.readers import Item

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
HASH_SIDE = 32
ORIENTATION = 0x0112  # the EXIF tag


@dataclass
class Decoded:
    pixels: np.ndarray  # uint8 [H, W, C], C = 1 or 3
    width: int  # the original size
    height: int
    grey32: np.ndarray  # float32 [32, 32], for the perceptual hash


def _open(data: bytes | np.ndarray) -> Image.Image:
    if isinstance(data, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(data, dtype=np.uint8), mode="L")
    im = Image.open(io.BytesIO(data))
    im.load()  # decodes now: a truncated file fails here, not later
    if im.getexif().get(ORIENTATION, 1) != 1:  # a photo taken sideways: as it is shown
        im = ImageOps.exif_transpose(im)
    return im


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    if mode == "auto":
        mode = "L" if im.mode in GREY_MODES else "RGB"
    if mode == "L":
        return im if im.mode == "L" else im.convert("L")
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def resize_crop(im: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then the central size x size square (size 0: unchanged)."""
    if size <= 0 or im.size == (size, size):
        return im
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def decode(item: Item, size: int, mode: str) -> Decoded | tuple[str, str]:
    """The item's pixels in the stage's shape, or (step, reason) when it cannot be decoded."""
    if item.problem:
        return item.problem
    if isinstance(item.data, np.ndarray) and item.data.ndim == 2 and mode != "RGB" and \
            (size == 0 or item.data.shape == (size, size)):
        return _grey_pixels(item.data)  # IDX: already the output's pixels
    try:
        im = _open(item.data if item.data is not None else b"")
        width, height = im.size
        im = resize_crop(_to_mode(im, mode), size)
    except UnidentifiedImageError:
        return ("decode", "not an image")
    except Image.DecompressionBombError:
        return ("decode", "image too large")
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        reason = "truncated image" if "truncat" in str(e).lower() else "damaged image"
        return ("decode", reason)
    pixels = np.asarray(im, dtype=np.uint8)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    grey = im if im.mode == "L" else im.convert("L")
    grey32 = np.asarray(grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR), dtype=np.float32)
    return Decoded(pixels, width, height, grey32)


def _grey_pixels(data: np.ndarray) -> Decoded:
    """A grey pixel array that needs no decoding, resizing or conversion."""
    pixels = np.ascontiguousarray(data, dtype=np.uint8)
    grey = Image.fromarray(pixels, mode="L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR)
    return Decoded(pixels[:, :, None], pixels.shape[1], pixels.shape[0], np.asarray(grey, dtype=np.float32))


def exact_hash(pixels: np.ndarray) -> int:
    """xxh3-64 of the pixels and their shape, as a signed int64 (Parquet has no uint64 sort)."""
    h = xxhash.xxh3_64(np.array(pixels.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return int(np.uint64(h.intdigest()).view(np.int64))


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m.astype(np.float64)


_DCT = _dct_matrix(HASH_SIDE)


def phash(grey32: np.ndarray) -> np.ndarray:
    """64-bit pHash of each [32, 32] grey thumbnail: the signs of the 8x8 lowest DCT
    frequencies against their median (as imagehash.phash). Returns int64 [n]."""
    g = np.asarray(grey32, dtype=np.float64).reshape(-1, HASH_SIDE, HASH_SIDE)
    low = (_DCT[:8] @ g @ _DCT[:8].T).reshape(len(g), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    weights = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64).view(np.int64)
