"""The stage contract: manifest last, no-op rerun, resume, --force, config mismatch;
duplicates with their survivor; the report; the same output with 1 or 2 workers or Ray."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from image_helpers import encode, picture

from mlscale.cli import main
from mlscale.errors import ArtifactError
from mlscale.images import ImageData, ImagesConfig, build_images


def _cfg(workers=1, unit_images=4):
    cfg = ImagesConfig()
    cfg.workers = workers
    cfg.shards.unit_images = unit_images
    cfg.shards.images = 3
    return cfg


def _digests(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
            if p.is_file() and p.suffix in (".npy", ".parquet", ".json") and p.name not in
            ("manifest.json", "stage.json")}


@pytest.fixture
def dup_folder(folder):
    """The folder plus an exact copy, and a JPEG re-encoding of a PNG (a near duplicate)."""
    (folder / "dog" / "copy.png").write_bytes((folder / "cat" / "0.png").read_bytes())
    from PIL import Image

    Image.open(folder / "cat" / "2.png").save(folder / "dog" / "z-recoded.jpg", quality=95)
    return folder


def test_duplicates_are_removed_with_their_survivor(dup_folder, tmp_path):
    cfg = _cfg()
    cfg.split.val_fraction = 0.0
    m = build_images([dup_folder], tmp_path / "out", cfg, progress=False)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "removed" / "part-00000.parquet").to_pylist()}
    assert rows["dog/copy.png"]["reason"] == "exact duplicate"
    assert rows["dog/copy.png"]["duplicate_of"] == "cat/0.png"
    assert rows["dog/z-recoded.jpg"]["reason"] == "near duplicate"
    assert rows["dog/z-recoded.jpg"]["duplicate_of"] == "cat/2.png"
    assert m["counts"] == {"read": 8, "kept": 6, "removed": {"exact duplicate": 1, "near duplicate": 1}}
    cfg.dedup.near_radius = -1
    cfg.dedup.exact = False
    m = build_images([dup_folder], tmp_path / "all", cfg, progress=False)
    assert m["counts"]["kept"] == 8


def test_no_op_rerun_resume_force_and_config_mismatch(dup_folder, tmp_path):
    out = tmp_path / "out"
    first = build_images([dup_folder], out, _cfg(), progress=False)
    digests = _digests(out)
    assert len([n for n in digests if n.endswith(".images.npy")]) >= 2  # several shards
    assert not (out / ".work").exists()
    again = build_images([dup_folder], out, _cfg(), progress=False)
    assert again == first  # finished: returned as is
    # interrupted after the first unit and one shard: the rerun redoes the rest only
    (out / "manifest.json").unlink()
    for marker in sorted((out / ".done").iterdir())[1:]:
        if marker.name != "shard-train-00000":
            marker.unlink()
    for p in out.glob("*.npy"):
        if not p.name.startswith("train-00000"):
            p.unlink()
    build_images([dup_folder], out, _cfg(), progress=False)
    assert _digests(out) == digests
    other = _cfg()
    other.images.size = 8
    with pytest.raises(ArtifactError, match=r"images.size: 0 -> 8.*--force"):
        build_images([dup_folder], out, other, progress=False)
    build_images([dup_folder], out, other, force=True, progress=False)
    assert ImageData(out).shape == (8, 8, 3)
    # execution settings may change on an existing output
    other.workers = 2
    assert build_images([dup_folder], out, other, progress=False)["image_shape"] == [8, 8, 3]


def test_manifest_and_report(dup_folder, tar_shard, tmp_path):
    out = tmp_path / "out"
    m = build_images([dup_folder, tar_shard], out, _cfg(), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "images" and manifest["format"] == "mlscale-images-v1"
    assert manifest["image_shape"] == [16, 20, 3] and manifest["classes"] == ["0", "1", "cat", "dog"]
    assert set(manifest["timings"]) == {"decode", "gather_dedup", "write"} and "inputs" in manifest
    c = m["counts"]
    assert c["read"] == 13 and c["read"] == c["kept"] + sum(c["removed"].values())
    assert sum(s["images"] for s in m["splits"].values()) == c["kept"]
    assert sum(sum(s["per_class"].values()) + s["unlabelled"] for s in m["splits"].values()) == c["kept"]
    html = (out / "report.html").read_text()
    for part in ("Samples per class", "class balance", "aspect ratios", "exact duplicate",
                 "Duplicates beside what they duplicate", "data:image/png;base64"):
        assert part in html
    assert "http://" not in html and "https://" not in html  # self-contained
    data = ImageData(out)
    assert json.loads((out / "classes.json").read_text()) == data.classes
    assert sum(len(data.split(s)) for s in ("train", "val")) == c["kept"]
    assert np.asarray(data.split("train").images).dtype == np.uint8


def test_command_line_help_and_summary(folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["images", "--help"])
    text = capsys.readouterr().out
    for part in ("ImageFolder", "WebDataset", "--images.size", "near_radius", "examples:", "--force"):
        assert part in text
    assert main(["images", str(folder), "--out", str(tmp_path / "o"), "--workers", "1", "--quiet"]) == 0
    assert main(["images", str(folder), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "6 images read, 6 kept" in out and "nothing to do" in out
    assert main(["images", str(folder), "--out", str(tmp_path / "o"), "--dedup.near_radios=3"]) == 2
    assert "did you mean 'dedup.near_radius'" in capsys.readouterr().err


def test_output_does_not_depend_on_workers_or_ray(dup_folder, tmp_path):
    build_images([dup_folder], tmp_path / "local", _cfg(workers=1), progress=False)
    build_images([dup_folder], tmp_path / "two", _cfg(workers=2), progress=False)
    assert _digests(tmp_path / "two") == _digests(tmp_path / "local")
    ray = pytest.importorskip("ray")  # an optional extra, installed for the tests
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cfg = _cfg()
        cfg.executor = "ray"
        m = build_images([dup_folder], tmp_path / "ray", cfg, progress=False)
    finally:
        ray.shutdown()
    assert m["execution"]["executor"] == "ray"
    assert _digests(tmp_path / "ray") == _digests(tmp_path / "local")


def test_an_interrupted_run_resumes_from_its_finished_units(folder, tmp_path, monkeypatch):
    import mlscale.images.stage as stage

    calls = []
    real = stage.process_unit

    def interrupted(context, task):
        if len(calls) == 1:
            raise KeyboardInterrupt  # the second unit: as if the user pressed Ctrl-C
        calls.append(task[0])
        return real(context, task)

    cfg = _cfg(unit_images=2)  # 3 units of 2 images
    monkeypatch.setattr(stage, "process_unit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_images([folder], tmp_path / "out", cfg, progress=False)
    assert calls == [0] and not (tmp_path / "out" / "manifest.json").exists()

    def counted(context, task):
        calls.append(task[0])
        return real(context, task)

    monkeypatch.setattr(stage, "process_unit", counted)
    build_images([folder], tmp_path / "out", cfg, progress=False)
    assert calls == [0, 1, 2]  # unit 0 was not decoded again
    build_images([folder], tmp_path / "fresh", cfg, progress=False)
    assert _digests(tmp_path / "out") == _digests(tmp_path / "fresh")
