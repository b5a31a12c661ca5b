"""Tiny synthetic image inputs of every kind `mlscale images` reads, written by the tests."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from image_helpers import encode, picture, write_idx  # shared with the tests


@pytest.fixture
def idx_dir(tmp_path: Path) -> Callable[..., tuple[Path, np.ndarray, np.ndarray]]:
    def make(name: str = "digits", n_train: int = 12, n_test: int = 5, gz: bool = True):
        root = tmp_path / name
        root.mkdir()
        rng = np.random.default_rng(0)
        ext = ".gz" if gz else ""
        out = []
        for prefix, n in (("train", n_train), ("t10k", n_test)):
            images = rng.integers(0, 256, size=(n, 7, 6)).astype(np.uint8)
            labels = (np.arange(n) % 10).astype(np.uint8)
            write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
            write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
            out += [images, labels]
        return root, out
    return make


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """ImageFolder: 2 classes x 3 PNG/JPEG pictures of 20x16."""
    root = tmp_path / "folder"
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            im = picture(10 * c + i)
            fmt = "PNG" if i % 2 == 0 else "JPEG"
            (root / cls / f"{i}.{fmt.lower().replace('jpeg', 'jpg')}").write_bytes(encode(im, fmt))
    return root


@pytest.fixture
def tar_shard(tmp_path: Path) -> Path:
    """A WebDataset shard: 3 keys with .cls, 1 with .txt, 1 with .json."""
    path = tmp_path / "shard-000.tar"
    members = {}
    for i in range(3):
        members[f"k{i}.png"] = encode(picture(100 + i))
        members[f"k{i}.cls"] = str(i % 2).encode()
    members["k3.webp"] = encode(picture(103), "WEBP")
    members["k3.txt"] = b"a caption"
    members["k4.jpg"] = encode(picture(104), "JPEG")
    members["k4.json"] = json.dumps({"label": 1, "caption": "json caption"}).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def hf_parquet(tmp_path: Path) -> Path:
    """Parquet as Hugging Face datasets writes it: {bytes, path} struct, ClassLabel names."""
    path = tmp_path / "test-00000-of-00001.parquet"
    rows = [{"image": {"bytes": encode(picture(200 + i)), "path": f"{i}.png"}, "label": i % 3,
             "caption": f"picture {i}"} for i in range(4)]
    table = pa.Table.from_pylist(rows)
    hf = {"info": {"features": {"label": {"names": ["ant", "bee", "cow"], "_type": "ClassLabel"}}}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps(hf).encode()})
    pq.write_table(table, path)
    return path


@pytest.fixture
def csv_pairs(tmp_path: Path) -> Path:
    root = tmp_path / "pairs"
    root.mkdir()
    lines = ["filepath,caption,label"]
    for i in range(4):
        (root / f"p{i}.png").write_bytes(encode(picture(300 + i)))
        lines.append(f"p{i}.png,caption {i},{'red' if i % 2 else 'blue'}")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root / "pairs.csv"
