"""The images stage: inputs -> DIR/ of image shards, classes.json, removed/, report, manifest.

1. decode: every work unit (a slice of one input) is read, decoded and hashed by a worker
   into DIR/.work; its completion marker holds its removals (resume skips finished units);
2. gather: classes, the common shape, the split of every image, exact and near duplicates;
3. write: the shards of each split (one marker per shard), removed/, classes.json,
   report.html, and manifest.json last. DIR/.work is deleted after the manifest.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from mlscale.artifacts import StageDir, atomic_path, fingerprint_paths
from mlscale.errors import ArtifactError, ConfigError, InputError, check_out_dir
from mlscale.executors import available_cores, make_executor
from mlscale.images.config import ImagesConfig
from mlscale.images.data import FORMAT, STAGE_NAME, write_classes
from mlscale.images.dedup import candidate_pairs, clusters, exact_duplicates
from mlscale.images.readers import Unit, plan_units
from mlscale.images.shards import SPLITS, write_shard
from mlscale.images.units import WORK, process_unit, unit_paths

REMOVED_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False), pa.field("source", pa.string(), nullable=False),
    pa.field("step", pa.string(), nullable=False), pa.field("reason", pa.string(), nullable=False),
    pa.field("duplicate_of", pa.string(), nullable=True),
])


@dataclass
class Gathered:
    """Every decoded image of the stage, in input order (unit by unit)."""

    rows: pa.Table  # the units' rows, concatenated
    arrays: list[np.ndarray]  # the units' memory-mapped images
    starts: np.ndarray  # first row of each unit
    shape: tuple[int, int, int]
    classes: list[str]
    labels: np.ndarray  # int64, -1 unlabelled
    split: np.ndarray  # 0 train, 1 val
    removed: list[dict[str, Any]]  # decode removals, then duplicates
    read: int
    keep: np.ndarray | None = None  # set by _deduplicate: kept after dedup

    def images(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *self.shape), dtype=np.uint8)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        for k in np.unique(which):
            sel = which == k
            part = self.arrays[k][idx[sel] - self.starts[k]]
            out[sel] = np.repeat(part, self.shape[2], axis=3) if part.shape[3] < self.shape[2] else part
        return out


def build_images(inputs: Sequence[str | Path], out: str | Path, cfg: ImagesConfig | None = None, *,
                 force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Decode `inputs` into image shards under `out`; returns the manifest.

    A finished `out` with the same config and inputs is returned as is; an interrupted one
    resumes from its finished work units; `force` starts over.
    """
    cfg = cfg or ImagesConfig()
    check_out_dir(out)  # a file there is refused before any input is read
    units, files = plan_units(inputs, cfg.shards.unit_images)
    fingerprints = fingerprint_paths([f.resolve() for f in files])
    stage = StageDir.open(out, STAGE_NAME, cfg.identity(), fingerprints, force=force)
    if stage.complete:
        return stage.manifest()
    t0 = time.time()
    records, workers = _decode_units(stage, units, cfg, progress)
    t1 = time.time()
    g = _gather(stage, units, records, cfg)
    dups = _deduplicate(g, cfg)
    t2 = time.time()
    splits = _write_shards(stage, g, cfg)
    _write_removed(stage, g.removed)
    write_classes(stage.path, g.classes)
    t3 = time.time()
    body = _manifest_body(g, splits, dups, units, {"executor": cfg.executor, "workers": workers},
                          {"decode": t1 - t0, "gather_dedup": t2 - t1, "write": t3 - t2})
    from mlscale.images.report import write_report

    write_report(stage.path / "report.html", body, g, stage.config)
    manifest = stage.write_manifest(body)
    shutil.rmtree(stage.path / WORK, ignore_errors=True)
    return manifest


def _decode_units(stage: StageDir, units: list[Unit], cfg: ImagesConfig,
                  progress: bool) -> tuple[list[dict[str, Any]], int]:
    todo = [(i, u) for i, u in enumerate(units)
            if not (stage.unit_done(f"unit-{i:05d}") and all(p.exists() for p in unit_paths(stage.path, i)))]
    context = {"out": str(stage.path), "size": cfg.images.size, "mode": cfg.images.mode,
               "on_error": cfg.on_error}
    workers = 1
    if todo:
        n = min(cfg.workers or available_cores(), len(todo)) if cfg.executor == "local" else cfg.workers
        with make_executor(cfg.executor, n, cfg.ray.address, preload=("mlscale.images.units",)) as ex:
            workers = ex.workers
            results = (ex.run(process_unit, context, todo, "images: decoding", done=len(units) - len(todo))
                       if progress else ex.map(process_unit, context, todo))
            for (i, _), record in results:
                stage.mark_done(f"unit-{i:05d}", record)
    return [stage.unit_payload(f"unit-{i:05d}") for i in range(len(units))], workers


def _classes(records: list[dict[str, Any]], names: set[str]) -> list[str]:
    """Declared class orders first (IDX, Hugging Face); else integer names 0..max; else sorted."""
    ordered: list[str] = []
    for r in records:
        for c in r.get("classes") or []:
            if c not in ordered:
                ordered.append(c)
    rest = sorted(names - set(ordered))
    if not ordered and rest and all(c.isdigit() for c in rest):
        return [str(i) for i in range(max(int(c) for c in rest) + 1)]
    return ordered + rest


def _gather(stage: StageDir, units: list[Unit], records: list[dict[str, Any]], cfg: ImagesConfig) -> Gathered:
    tables, arrays, shapes = [], [], []
    for i, r in enumerate(records):
        npy, table = unit_paths(stage.path, i)
        try:
            tables.append(pq.read_table(table))
            arrays.append(np.load(npy, mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError, pa.ArrowException) as e:
            raise ArtifactError(f"{npy} or {table} is damaged ({e}); rerun with --force") from None
        if r["shape"]:
            shapes.append((tuple(r["shape"]), units[i].path))
    if not shapes:
        bad = [x for r in records for x in r["removed"]]
        named = "; ".join(f"{x['source']}: {x['reason']}" for x in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise InputError(f"no image of the inputs could be used ({named or 'no images'})")
    hw = {s[:2] for s, _ in shapes}
    if len(hw) > 1:
        (a, pa_), (b, pb) = shapes[0], next(x for x in shapes if x[0][:2] != shapes[0][0][:2])
        raise ConfigError(f"images differ in size ({pa_}: {a[1]}x{a[0]}, {pb}: {b[1]}x{b[0]}): set "
                          "--images.size=N to resize and center-crop every image to N x N")
    shape = (*shapes[0][0][:2], max(s[2] for s, _ in shapes))
    rows = pa.concat_tables(tables)
    names = rows.column("label").to_pylist()
    classes = _classes(records, {n for n in names if n is not None})
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([-1 if n is None else index[n] for n in names], dtype=np.int64)
    starts = np.cumsum([0] + [len(a) for a in arrays])[:-1]
    split = _assign_splits(rows, cfg)
    removed = [x for r in records for x in r["removed"]]
    read = sum(r["read"] for r in records)
    return Gathered(rows, arrays, starts, shape, classes, labels, split, removed, read)


def _assign_splits(rows: pa.Table, cfg: ImagesConfig) -> np.ndarray:
    """0 train / 1 val: the input's own split, else a hash of the id against val_fraction."""
    own = rows.column("split").to_pylist()
    ids = rows.column("id").to_pylist()
    limit = cfg.split.val_fraction * 2.0 ** 64
    seed = cfg.split.seed
    return np.array([(s == "val") if s else (xxhash.xxh3_64_intdigest(i.encode("utf-8"), seed=seed) < limit)
                     for s, i in zip(own, ids)], dtype=np.int8)


def _deduplicate(g: Gathered, cfg: ImagesConfig) -> dict[str, Any]:
    """Set `g.keep` and record the duplicates in `g.removed`; val ranks first."""
    n = g.rows.num_rows
    rank = np.lexsort((np.arange(n), 1 - g.split))  # val first, then input order
    pos = np.empty(n, dtype=np.int64)
    pos[rank] = np.arange(n)
    ids = g.rows.column("id").to_pylist()
    sources = g.rows.column("source").to_pylist()
    keep = np.ones(n, dtype=bool)
    stats = {"exact": 0, "near": 0, "near_candidates": 0}
    if cfg.dedup.exact:
        first = exact_duplicates(g.rows.column("xhash").to_numpy(), pos)
        _remove(g, keep, first, "exact duplicate", ids, sources, stats, "exact")
    if cfg.dedup.near_radius >= 0:
        alive = np.flatnonzero(keep)
        i, j = candidate_pairs(g.rows.column("phash").to_numpy()[alive], cfg.dedup.near_radius)
        stats["near_candidates"] = int(len(i))
        i, j = _verified(g, alive[i], alive[j], cfg.dedup.near_max_diff)
        where = np.full(n, -1, dtype=np.int64)
        where[alive] = np.arange(len(alive))
        root = clusters(len(alive), where[i], where[j], pos[alive])
        _remove(g, keep, alive[root], "near duplicate", ids, sources, stats, "near", alive)
    g.keep = keep
    return stats


def _verified(g: Gathered, i: np.ndarray, j: np.ndarray, max_diff: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs whose decoded pixels differ by at most max_diff * 255 on average."""
    if max_diff >= 1.0 or not len(i):
        return i, j
    ok = np.zeros(len(i), dtype=bool)
    for a in range(0, len(i), 4096):
        x = g.images(i[a:a + 4096]).astype(np.int16)
        y = g.images(j[a:a + 4096]).astype(np.int16)
        ok[a:a + 4096] = np.abs(x - y).mean(axis=(1, 2, 3)) <= max_diff * 255
    return i[ok], j[ok]


def _remove(g: Gathered, keep: np.ndarray, survivor: np.ndarray, reason: str, ids: list[str],
            sources: list[str], stats: dict[str, int], key: str, among: np.ndarray | None = None) -> None:
    members = np.arange(len(keep)) if among is None else among
    for m, s in zip(members.tolist(), survivor.tolist()):
        if m != s:
            keep[m] = False
            stats[key] += 1
            g.removed.append({"id": ids[m], "source": sources[m], "step": "dedup", "reason": reason,
                              "duplicate_of": ids[s]})


def _write_shards(stage: StageDir, g: Gathered, cfg: ImagesConfig) -> dict[str, Any]:
    meta_cols = ["id", "source", "caption", "width", "height"]
    out: dict[str, Any] = {}
    for code, split in enumerate(SPLITS):
        idx = np.flatnonzero(g.keep & (g.split == code))
        shards = []
        for k, a in enumerate(range(0, len(idx), cfg.shards.images)):
            part = idx[a:a + cfg.shards.images]
            unit = f"shard-{split}-{k:05d}"
            if stage.unit_done(unit):
                shards.append(stage.unit_payload(unit))
                continue
            meta = g.rows.select(meta_cols).take(pa.array(part)).to_pylist()
            entry = write_shard(stage.path, split, k, g.images(part), g.labels[part], meta)
            stage.mark_done(unit, entry)
            shards.append(entry)
        labels = g.labels[idx]
        per_class = {c: int(v) for c, v in zip(g.classes, np.bincount(labels[labels >= 0],
                                                                       minlength=len(g.classes)))}
        out[split] = {"images": int(len(idx)), "per_class": per_class,
                      "unlabelled": int((labels < 0).sum()), "shards": shards}
    return out


def _write_removed(stage: StageDir, removed: list[dict[str, Any]]) -> None:
    with atomic_path(stage.path / "removed" / "part-00000.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(removed, schema=REMOVED_SCHEMA), tmp, compression="zstd")


def _manifest_body(g: Gathered, splits: dict[str, Any], dups: dict[str, int], units: list[Unit],
                   execution: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for r in g.removed:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    kept = sum(s["images"] for s in splits.values())
    if g.read != kept + sum(reasons.values()):  # every image read ends kept or removed
        raise AssertionError(f"counts do not reconcile: read {g.read}, kept {kept}, removed {reasons}")
    return {
        "format": FORMAT,
        "image_shape": list(g.shape),
        "classes": g.classes,
        "counts": {"read": g.read, "kept": kept, "removed": reasons},
        "splits": splits,
        "duplicates": dups,
        "sources": sorted({u.path for u in units}),
        "work_units": len(units),
        "execution": execution,
        "timings": {k: round(v, 3) for k, v in seconds.items()},
    }
