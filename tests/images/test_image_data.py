"""ImageData: classes, shape, memory-mapped sharded images, labels, lazy meta, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mlscale.errors import ArtifactError
from mlscale.images import ImageData
from mlscale.images.data import ShardedImages, write_classes
from mlscale.images.shards import write_shard


def _fake_output(root, sizes=(3, 0, 5), shape=(4, 6, 1)):
    """An images output written through the stage's own shard writer."""
    rng = np.random.default_rng(0)
    shards, all_images, all_labels = [], [], []
    for k, n in enumerate(sizes):
        images = rng.integers(0, 256, size=(n, *shape)).astype(np.uint8)
        labels = rng.integers(-1, 2, size=n).astype(np.int64)
        meta = [{"id": f"img{k}-{i}", "source": "x.png", "caption": None if i % 2 else f"c{i}",
                 "width": 6, "height": 4} for i in range(n)]
        shards.append(write_shard(root, "train", k, images, labels, meta))
        all_images.append(images)
        all_labels.append(labels)
    write_classes(root, ["a", "b"])
    manifest = {"stage": "images", "image_shape": list(shape),
                "splits": {"train": {"images": sum(sizes), "shards": shards},
                           "val": {"images": 0, "shards": []}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return np.concatenate(all_images), np.concatenate(all_labels)


def test_splits_read_back_what_the_shards_hold(tmp_path):
    images, labels = _fake_output(tmp_path)
    data = ImageData(tmp_path)
    assert data.classes == ["a", "b"] and data.shape == (4, 6, 1) and data.num_classes == 2
    train = data.split("train")
    assert len(train) == 8 and train.images.shape == (8, 4, 6, 1)
    idx = np.array([7, 0, 3, 3, 2])
    np.testing.assert_array_equal(train.images[idx], images[idx])
    np.testing.assert_array_equal(train.labels, labels)
    assert train.labels.dtype == np.int64
    meta = train.meta()
    assert meta.column_names == ["id", "source", "caption", "width", "height"]
    assert meta.num_rows == 8 and meta.column("id")[3].as_py() == "img2-0"
    val = data.split("val")
    assert len(val) == 0 and val.labels.shape == (0,) and val.meta().num_rows == 0
    with pytest.raises(KeyError, match="unknown split"):
        data.split("test")


def test_one_shard_is_a_plain_memmap(tmp_path):
    images, _ = _fake_output(tmp_path, sizes=(5,))
    arr = ImageData(tmp_path).split("train").images
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    np.testing.assert_array_equal(arr, images)


def test_sharded_images_index_like_the_concatenation():
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 256, size=(n, 2, 3, 3)).astype(np.uint8) for n in (4, 0, 7, 1)]
    whole = np.concatenate(parts)
    arr = ShardedImages(parts, (2, 3, 3))
    assert len(arr) == 12 and arr.shape == (12, 2, 3, 3)
    for i in (0, 3, 4, 11, -1, -12):
        np.testing.assert_array_equal(arr[i], whole[i])
    np.testing.assert_array_equal(arr[2:9], whole[2:9])
    idx = rng.integers(0, 12, size=(3, 5))
    np.testing.assert_array_equal(arr[idx], whole[idx])
    np.testing.assert_array_equal(np.asarray(arr), whole)
    with pytest.raises(IndexError):
        arr[np.array([0, 12])]


def test_unfinished_or_damaged_outputs_are_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="not a `mlscale images` output"):
        ImageData(tmp_path)
    (tmp_path / "stage.json").write_text("{}")
    with pytest.raises(ArtifactError, match="unfinished"):
        ImageData(tmp_path)
    _fake_output(tmp_path)
    (tmp_path / "train-00002.images.npy").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="train-00002.images.npy is missing or damaged"):
        ImageData(tmp_path).split("train").images
