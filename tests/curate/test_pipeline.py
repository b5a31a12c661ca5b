"""`curate()` end to end: outputs, counts that reconcile, planted duplicates found, and the
staged dedup equal to an in-memory computation of the same definitions."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from mlscale.config import load_config
from mlscale.curate.config import CurateConfig
from mlscale.curate.dedup import near_duplicates
from mlscale.curate.dedup.clusters import choose_survivors
from mlscale.curate.dedup.exact import exact_keys, exact_labels
from mlscale.curate.output import KEPT_SCHEMA, REMOVED_SCHEMA
from mlscale.curate.pipeline import curate
from mlscale.data import bundled_corpus


def config(*overrides: str) -> CurateConfig:
    return load_config(CurateConfig, overrides=["--workers=1", *overrides])


def test_dedup_removes_exactly_the_planted_duplicates(dedup_corpus, reference, outputs):
    _folder, planted = dedup_corpus
    out, manifest = reference.out, reference.manifest
    kept, removed = outputs.rows(out)
    assert manifest["records"] == planted["total"] == len(kept) + len(removed)
    by_id = {r["id"]: r for r in removed}
    assert set(by_id) == set(planted["exact"]) | set(planted["near"])
    for copy, original in planted["exact"].items():
        r = by_id[copy]
        assert (r["step"], r["reason"], r["duplicate_of"]) == ("exact", "duplicate", original)
        assert r["cluster_id"].startswith("exact-")
    for copy, original in planted["near"].items():
        r = by_id[copy]
        assert (r["step"], r["reason"], r["duplicate_of"]) == ("near", "near_duplicate", original)
        assert r["cluster_id"].startswith("near-") and "estimated Jaccard" in r["detail"]
    assert all(k["id"].startswith("doc-") for k in kept)
    # the Parquet files have the documented schemas
    assert pq.read_schema(out / manifest["outputs"]["kept"][0]).equals(KEPT_SCHEMA)
    assert pq.read_schema(out / manifest["outputs"]["removed"][0]).equals(REMOVED_SCHEMA)
    funnel = {g["step"]: g for g in manifest["funnel"]}
    assert list(funnel) == ["read", "language", "exact", "near"]
    assert funnel["exact"]["removed"] == {"duplicate": len(planted["exact"])}
    assert funnel["near"]["removed"] == {"near_duplicate": len(planted["near"])}
    assert funnel["near"]["out"] == manifest["kept"]
    # intermediate files are gone once the manifest is written
    assert not (out / ".work").exists() and (out / "report.html").is_file()


def test_staged_dedup_equals_in_memory_dedup_whatever_the_partitioning(reference, tmp_path,
                                                                       outputs):
    folder = reference.folder
    # the reference cut the files into many shards and the keys into 3 partitions
    assert reference.manifest["work_units"]["shards"] > 3
    assert reference.manifest["work_units"]["key_partitions"] == 3
    whole = config("--steps=language,exact,near")
    m_whole = curate([folder], tmp_path / "whole", whole)
    # the three small files packed into one unit
    assert m_whole["work_units"] == {"input_files": 3, "shards": 1, "key_partitions": 1}
    kept_cut, removed_cut = outputs.rows(reference.out)
    kept_whole, removed_whole = outputs.rows(tmp_path / "whole")
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(kept_cut, key=key) == sorted(kept_whole, key=key)
    assert sorted(removed_cut, key=key) == sorted(removed_whole, key=key)

    # the same definitions computed in one process (dedup's own driver), in input order
    records = [json.loads(line) for f in sorted(folder.glob("*.jsonl"))
               for line in f.read_text("utf-8").splitlines()]
    texts = [r["text"] for r in records]
    labels = exact_labels(exact_keys(texts))
    exact_survivor, _ = choose_survivors(labels, np.arange(len(texts)))
    alive = [i for i in range(len(texts)) if exact_survivor[i] == i]
    near = near_duplicates([texts[i] for i in alive], whole.near).duplicate_of
    expected = {records[i]["id"]: ("exact", records[exact_survivor[i]]["id"])
                for i in range(len(texts)) if exact_survivor[i] != i}
    expected.update({records[alive[i]]["id"]: ("near", records[alive[s]]["id"])
                     for i, s in enumerate(near.tolist()) if s >= 0})
    got = {r["id"]: (r["step"], r["duplicate_of"]) for r in removed_whole}
    assert got == expected
    assert {step for step, _ in expected.values()} == {"exact", "near"}


def test_full_pipeline_on_the_bundled_sample(tmp_path, outputs):
    out = tmp_path / "sample"
    manifest = curate(bundled_corpus(), out, config())
    kept, removed = outputs.rows(out)
    assert manifest["records"] == len(kept) + len(removed) > 200
    ids = [r["id"] for r in kept] + [r["id"] for r in removed]
    assert len(set(ids)) == len(ids), "a document is both kept and removed, or doubled"
    steps = [g["step"] for g in manifest["funnel"]]
    assert steps == ["read", "extract", "language", "quality", "exact", "near"]
    for prev, cur in zip(manifest["funnel"], manifest["funnel"][1:]):
        assert prev["out"] == cur["in"]
    # the Debian Reference in German, French and Japanese is removed by language ID
    lang = [r for r in removed if r["step"] == "language"]
    assert {r["detail"].split()[0] for r in lang} >= {"de", "fr", "ja"}
    for row in kept:
        meta = json.loads(row["metadata"])
        assert meta["language"] == "en" and meta["language_score"] >= 0.65
        assert row["text"] and "<html" not in row["text"].lower()
    dup_rows = [r for r in removed if r["step"] in ("exact", "near")]
    assert all(r["duplicate_of"] and r["cluster_id"] for r in dup_rows)
    assert all(r["duplicate_of"] is None and r["cluster_id"] is None
               for r in removed if r["step"] not in ("exact", "near"))
    quality = next(g for g in manifest["funnel"] if g["step"] == "quality")
    assert {s["step"] for s in quality["substeps"]} >= {"gopher_quality", "c4"}
    hist = manifest["histograms"]
    assert sum(hist["length_kept"]) == manifest["kept"]
    assert sum(hist["language_score"]) == next(
        g["in"] for g in manifest["funnel"] if g["step"] == "language")


def test_units_slice_large_files_and_pack_small_ones(tmp_path):
    from mlscale.curate.staging.plan import plan_filter_units

    sizes = {"a.jsonl": 10, "b.jsonl": 35, "c.jsonl": 20, "d.jsonl": 20, "e.jsonl": 100}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
    units = plan_filter_units(sorted(tmp_path.iterdir()), input_bytes=40, pack_bytes=40)
    layout = [[(p.source, p.slice, p.slices) for p in u.pieces] for u in units]
    assert layout == [
        [("a.jsonl", 0, 1)],  # a + b would exceed 40 bytes
        [("b.jsonl", 0, 1)],
        [("c.jsonl", 0, 1), ("d.jsonl", 0, 1)],  # exactly 40
        [("e.jsonl", 0, 3)], [("e.jsonl", 1, 3)], [("e.jsonl", 2, 3)],
    ]
    assert [u.shard for u in units] == list(range(6))
    assert [p.file_index for u in units for p in u.pieces] == [0, 1, 2, 3, 4, 4, 4]
