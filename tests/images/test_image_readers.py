"""Every input kind reads into the same output: labels, classes, captions, splits."""
from __future__ import annotations

import numpy as np
import pytest

from mlscale.images import ImageData, ImagesConfig, build_images


def _cfg(**dedup):
    cfg = ImagesConfig()
    cfg.workers = 1
    for k, v in dedup.items():
        setattr(cfg.dedup, k, v)
    return cfg


@pytest.mark.parametrize("gz", [True, False])
def test_idx_keeps_its_split_pixels_and_digit_classes(idx_dir, tmp_path, gz):
    root, (tr_x, tr_y, te_x, te_y) = idx_dir(gz=gz)
    m = build_images([root], tmp_path / "out", _cfg(exact=False, near_radius=-1), progress=False)
    data = ImageData(tmp_path / "out")
    assert data.classes == [str(i) for i in range(10)] and data.shape == (7, 6, 1)
    train, val = data.split("train"), data.split("val")
    assert len(train) == 12 and len(val) == 5 and m["counts"] == {"read": 17, "kept": 17, "removed": {}}
    np.testing.assert_array_equal(train.images[np.arange(12)][..., 0], tr_x)
    np.testing.assert_array_equal(val.labels, te_y.astype(np.int64))
    assert val.meta().column("id")[0].as_py().startswith("t10k-images-idx3-ubyte")


def test_idx_in_a_fashion_mnist_folder_gets_its_class_names(idx_dir, tmp_path):
    root, _ = idx_dir(name="fashion-mnist")
    build_images([root], tmp_path / "out", _cfg(near_radius=-1), progress=False)
    classes = ImageData(tmp_path / "out").classes
    assert classes[0] == "T-shirt/top" and classes[9] == "Ankle boot" and len(classes) == 10


def test_image_folder_classes_are_folder_names(folder, tmp_path):
    cfg = _cfg()
    cfg.split.val_fraction = 0.0
    m = build_images([folder], tmp_path / "out", cfg, progress=False)
    data = ImageData(tmp_path / "out")
    assert data.classes == ["cat", "dog"] and data.shape == (16, 20, 3)
    assert data.split("train").labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert m["splits"]["train"]["per_class"] == {"cat": 3, "dog": 3}
    meta = data.split("train").meta().to_pylist()
    assert meta[0]["id"] == "cat/0.png" and meta[0]["width"] == 20 and meta[0]["caption"] is None


def test_tar_shard_labels_captions_and_json(tar_shard, tmp_path):
    cfg = _cfg()
    cfg.split.val_fraction = 0.0
    build_images([tar_shard], tmp_path / "out", cfg, progress=False)
    data = ImageData(tmp_path / "out")
    assert data.classes == ["0", "1"]
    train = data.split("train")
    assert train.labels.tolist() == [0, 1, 0, -1, 1]
    assert train.meta().column("caption").to_pylist() == [None, None, None, "a caption", "json caption"]


def test_hugging_face_parquet_test_split_and_label_names(hf_parquet, tmp_path):
    build_images([hf_parquet], tmp_path / "out", _cfg(), progress=False)
    data = ImageData(tmp_path / "out")
    assert data.classes == ["ant", "bee", "cow"]
    assert len(data.split("train")) == 0 and data.split("val").labels.tolist() == [0, 1, 2, 0]
    assert data.split("val").meta().column("caption")[1].as_py() == "picture 1"


def test_csv_pairs_with_captions_and_labels(csv_pairs, tmp_path):
    cfg = _cfg()
    cfg.split.val_fraction = 0.0
    build_images([csv_pairs], tmp_path / "out", cfg, progress=False)
    data = ImageData(tmp_path / "out")
    assert data.classes == ["blue", "red"]
    assert data.split("train").labels.tolist() == [0, 1, 0, 1]
    assert data.split("train").meta().column("caption")[2].as_py() == "caption 2"


def test_resize_crop_and_mode_policy(folder, tmp_path):
    (folder / "cat" / "wide.png").write_bytes((folder / "cat" / "0.png").read_bytes())
    from PIL import Image

    Image.new("L", (40, 10), 128).save(folder / "dog" / "grey.png")
    from mlscale.errors import ConfigError

    with pytest.raises(ConfigError, match=r"images differ in size .*--images.size=N"):
        build_images([folder], tmp_path / "a", _cfg(), progress=False)
    cfg = _cfg(near_radius=-1)
    cfg.images.size = 8
    build_images([folder], tmp_path / "b", cfg, progress=False)
    data = ImageData(tmp_path / "b")
    assert data.shape == (8, 8, 3)  # auto: one colour image makes the stage RGB
    cfg.images.mode = "L"
    build_images([folder], tmp_path / "c", cfg, progress=False)
    assert ImageData(tmp_path / "c").shape == (8, 8, 1)


def test_folders_named_for_a_split_keep_it(tmp_path):
    from image_helpers import encode, picture

    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            d = tmp_path / "data" / split / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}.png").write_bytes(encode(picture(40 + 10 * n + i)))
    build_images([tmp_path / "data"], tmp_path / "a", _cfg(), progress=False)
    data = ImageData(tmp_path / "a")
    assert (len(data.split("train")), len(data.split("val"))) == (3, 2) and data.classes == ["c0", "c1"]
    # the same folders given one by one
    build_images([tmp_path / "data" / "train", tmp_path / "data" / "test"], tmp_path / "b", _cfg(), progress=False)
    data = ImageData(tmp_path / "b")
    assert (len(data.split("train")), len(data.split("val"))) == (3, 2) and data.classes == ["c0", "c1"]


def test_parquet_units_read_only_their_row_groups(hf_parquet, tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(hf_parquet)
    pq.write_table(table, hf_parquet, row_group_size=3)  # units of 2 rows cross row groups
    cfg = _cfg()
    cfg.shards.unit_images = 2
    m = build_images([hf_parquet], tmp_path / "out", cfg, progress=False)
    assert m["work_units"] == 2
    meta = ImageData(tmp_path / "out").split("val").meta()
    assert meta.column("id").to_pylist() == [f"{hf_parquet.name}#{i}" for i in range(4)]
    assert meta.column("caption").to_pylist() == [f"picture {i}" for i in range(4)]


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    root = tmp_path / "photos" / "c"
    root.mkdir(parents=True)
    im = Image.new("RGB", (12, 6), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    im.save(root / "sideways.jpg", exif=exif)
    build_images([tmp_path / "photos"], tmp_path / "out", _cfg(), progress=False)
    data = ImageData(tmp_path / "out")
    assert data.shape == (12, 6, 3)  # shown upright: 6 wide, 12 high
    meta = data.split("train").meta().to_pylist() or data.split("val").meta().to_pylist()
    assert (meta[0]["width"], meta[0]["height"]) == (6, 12)


def test_idx_pixels_and_the_same_png_decode_alike():
    from image_helpers import encode
    from PIL import Image

    from mlscale.images.decode import decode, exact_hash, phash
    from mlscale.images.readers import Item

    pixels = np.random.default_rng(3).integers(0, 256, size=(9, 7)).astype(np.uint8)
    fast = decode(Item("a", "a", pixels), 0, "auto")
    slow = decode(Item("b", "b", encode(Image.fromarray(pixels))), 0, "auto")
    np.testing.assert_array_equal(fast.pixels, slow.pixels)
    assert exact_hash(fast.pixels) == exact_hash(slow.pixels)
    assert phash(fast.grey32) == phash(slow.grey32) and (fast.width, fast.height) == (7, 9)
