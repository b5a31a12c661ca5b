"""Bad images and bad inputs: removed with a reason, or one line naming the file."""
from __future__ import annotations

import io
import tarfile

import pyarrow.parquet as pq
import pytest
from image_helpers import encode, picture

from mlscale.cli import main
from mlscale.images import ImageData


def _run(capsys, *argv):
    rc = main(["images", *map(str, argv), "--workers", "1", "--quiet"])
    out, err = capsys.readouterr()
    return rc, out, err


def _removed(out_dir):
    rows = pq.read_table(out_dir / "removed" / "part-00000.parquet").to_pylist()
    return {r["id"]: r for r in rows}


def _spoil(folder):
    good = (folder / "cat" / "0.png").read_bytes()
    (folder / "cat" / "cut.png").write_bytes(good[: len(good) // 2])
    (folder / "dog" / "noise.png").write_bytes(b"this is no picture at all" * 10)
    return folder / "cat" / "cut.png"


def test_undecodable_images_are_removed_with_their_reason(folder, tmp_path, capsys):
    _spoil(folder)
    rc, out, err = _run(capsys, folder, "--out", tmp_path / "out")
    assert rc == 0, err
    removed = _removed(tmp_path / "out")
    assert removed["cat/cut.png"]["reason"] == "truncated image" and removed["cat/cut.png"]["step"] == "decode"
    assert removed["dog/noise.png"]["reason"] == "not an image"
    data = ImageData(tmp_path / "out")
    counts = data.manifest["counts"]
    assert counts["read"] == 8 and counts["kept"] == 6
    assert counts["read"] == counts["kept"] + sum(counts["removed"].values())
    assert "1 truncated image" in out and "1 not an image" in out


def test_on_error_fail_names_the_file_in_one_line(folder, tmp_path, capsys):
    bad = _spoil(folder)
    rc, out, err = _run(capsys, folder, "--out", tmp_path / "out", "--on-error", "fail")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert str(bad) in lines[0] and "truncated image" in lines[0]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_tar_member_without_its_label_is_removed(tmp_path, capsys):
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("a.png", encode(picture(1))), ("a.cls", b"3"), ("b.png", encode(picture(2)))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rc, out, err = _run(capsys, path, "--out", tmp_path / "out")
    assert rc == 0, err
    assert _removed(tmp_path / "out")["shard.tar#b"]["reason"] == "tar member without its label"
    rc, out, err = _run(capsys, path, "--out", tmp_path / "out2", "--on-error", "fail")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and f"{path}:b.png" in err


def test_missing_file_of_a_csv_is_removed(csv_pairs, tmp_path, capsys):
    (csv_pairs.parent / "p1.png").unlink()
    rc, out, err = _run(capsys, csv_pairs, "--out", tmp_path / "out", "--split.val_fraction=0")
    assert rc == 0, err
    assert _removed(tmp_path / "out")["pairs.csv#1"]["reason"] == "missing file"


@pytest.mark.parametrize("name,data,says", [
    ("x.parquet", b"PAR1 not really", "not a readable Parquet file"),
    ("x.tar", b"\x00garbage" * 100, "not a readable tar file"),
    ("train-images-idx3-ubyte", b"\x01\x02\x03\x04", "not an IDX file"),
    ("x.csv", b"a,b,c,d,e\n", "expected filepath,caption[,label]"),
    ("x.bin", b"data", "not a known input"),
])
def test_unreadable_inputs_are_one_line_naming_the_file(tmp_path, capsys, name, data, says):
    path = tmp_path / name
    path.write_bytes(data)
    rc, out, err = _run(capsys, path, "--out", tmp_path / "out")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert str(path) in lines[0] and says in lines[0]


def test_missing_and_empty_inputs(tmp_path, capsys):
    rc, _, err = _run(capsys, tmp_path / "nope", "--out", tmp_path / "out")
    assert rc == 2 and "input not found" in err and str(tmp_path / "nope") in err
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(capsys, tmp_path / "empty", "--out", tmp_path / "out")
    assert rc == 2 and "no images found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "file").write_text("x")
    rc, _, err = _run(capsys, tmp_path / "empty", "--out", tmp_path / "file")
    assert rc == 2 and "is a file, not a directory" in err
