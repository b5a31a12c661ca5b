"""`curate()`: raw documents to a clean, deduplicated corpus in one output directory.

    OUT/kept/part-*.parquet      the documents kept (id, text, source, url, metadata)
    OUT/removed/part-*.parquet   every document removed, with its step and reason
    OUT/report.html              the funnel, histograms and an example of each drop reason
    OUT/manifest.json            counts per step, timings, config, input fingerprints

The work runs as stages of independent units (see `staging/`), each recorded by a
completion marker once its files are written: an interrupted run started again with the
same inputs and config skips what is done and ends with exactly the output of an
uninterrupted one; a finished run is a no-op. Where the units run (in this process,
local processes, Ray) never changes what is written.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlscale.artifacts import StageDir, fingerprint_paths
from mlscale.curate.config import CurateConfig
from mlscale.curate.staging.layout import Layout
from mlscale.curate.staging.lookup import shard_table
from mlscale.curate.staging.plan import Context, key_partitions, plan_filter_units
from mlscale.curate.report import write_report
from mlscale.curate.staging.stats import (EXAMPLE_CHARS, LENGTH_EDGES, SCORE_EDGES, add_counts,
                                          merge_examples, merge_steps)
from mlscale.curate.staging.tasks import Task, run_task
from mlscale.errors import InputError
from mlscale.executors import Executor, make_executor

STAGE = "curate"


def _run_stage(sd: StageDir, executor: Executor, ctx: Context, tasks: list[Task],
               desc: str, timings: dict[str, float]) -> list[dict[str, Any]]:
    """Run the tasks not yet marked done; return every task's result, in task order."""
    start = time.perf_counter()
    pending = [t for t in tasks if not sd.unit_done(t.name)]
    if pending:
        for task, result in executor.run(run_task, ctx, pending, desc,
                                         done=len(tasks) - len(pending)):
            sd.mark_done(task.name, result)
    timings[desc] = round(time.perf_counter() - start, 3)
    return [sd.unit_payload(t.name) for t in tasks]


def _remove_temp_files(out: Path) -> None:
    """Temp files of writes cut short by a kill: never valid output, so delete them."""
    for tmp in out.rglob(".*.tmp"):
        try:
            tmp.unlink()
        except FileNotFoundError:  # pragma: no cover - a race with a dying worker
            pass


def _check_inputs(files: list[Path], inputs: Sequence[str | Path]) -> None:
    if all(f.stat().st_size == 0 for f in files):
        names = ", ".join(str(i) for i in inputs)
        raise InputError(f"the input is empty: {names} holds no data; nothing to curate")


def curate(inputs: Sequence[str | Path], out: str | Path, cfg: CurateConfig | None = None,
           force: bool = False) -> dict[str, Any]:
    """Curate the files or folders `inputs` into `out`; returns the manifest.

    Resumes an interrupted run in `out`; `force` deletes `out` and starts over. A
    different config or other inputs on an existing `out` raise ArtifactError naming
    what differs.
    """
    from mlscale.curate.readers import discover_inputs

    cfg = cfg or CurateConfig()
    files = [Path(f).resolve() for f in discover_inputs(list(inputs))]
    _check_inputs(files, inputs)
    out = Path(out)
    sd = StageDir.open(out, STAGE, cfg.identity(), fingerprint_paths(files), force=force)
    layout = Layout(out)
    if sd.complete:
        shutil.rmtree(layout.work, ignore_errors=True)
        return sd.manifest()
    _remove_temp_files(out)

    timings: dict[str, float] = {}
    units = plan_filter_units(files, cfg.shard.input_bytes, cfg.shard.pack_bytes)
    with make_executor(cfg.executor, cfg.workers, cfg.ray.address,
                       preload=["mlscale.curate.staging.tasks"]) as executor:
        ctx = Context(str(out), cfg)
        filtered = _run_stage(sd, executor, ctx, [Task("filter", u) for u in units], "filter",
                              timings)
        if sum(p["records"] for p in filtered) == 0:
            raise InputError(f"no records found in {', '.join(map(str, inputs))}: the input "
                             "files hold no documents; nothing to curate")
        docs = tuple(int(p["documents"]) for p in filtered)
        ctx = Context(str(out), cfg, docs, key_partitions(sum(docs), cfg.shard.dedup_docs))
        shards, parts = range(len(units)), range(ctx.parts)

        def stage(kind: str, args: Any, desc: str) -> list[dict[str, Any]]:
            return _run_stage(sd, executor, ctx, [Task(kind, a) for a in args], desc, timings)

        dedup: dict[str, list[dict[str, Any]]] = {}
        if "exact" in cfg.steps:
            dedup["exact-keys"] = stage("exact-keys", shards, "exact keys")
            dedup["exact-dups"] = stage("exact-dups", parts, "exact groups")
        if "near" in cfg.steps:
            bands, _rows = cfg.near.band_rows()
            dedup["near-signatures"] = stage("near-signatures", shards, "near signatures")
            dedup["near-band"] = stage("near-band", [(b, p) for b in range(bands) for p in parts],
                                       "near buckets")
            dedup["near-clusters"] = stage("near-clusters", [None], "near clusters")
        final = stage("final", shards, "write")

    body = _manifest_body(ctx, units, filtered, dedup, final, timings)
    examples = merge_examples([p["examples"] for p in filtered] + [p["examples"] for p in final])
    _attach_survivor_texts(ctx, examples)
    write_report(layout.report(), body, examples, cfg.identity())
    manifest = sd.write_manifest(body)
    shutil.rmtree(layout.work, ignore_errors=True)
    return manifest


def _group_funnel(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per user-level step (read, extract, language, quality, exact, near): in, out,
    reasons and seconds, with the quality filters' own lines as `substeps`."""
    groups: list[dict[str, Any]] = []
    for s in steps:
        if not groups or groups[-1]["step"] != s["group"]:
            groups.append({"step": s["group"], "in": s["in"], "out": s["out"], "removed": {},
                           "seconds": 0.0, "substeps": []})
        g = groups[-1]
        g["out"] = s["out"]
        g["seconds"] = round(g["seconds"] + s["seconds"], 3)
        for reason, n in s["removed"].items():
            g["removed"][reason] = g["removed"].get(reason, 0) + n
        g["substeps"].append({"step": s["name"], "in": s["in"], "out": s["out"],
                              "removed": s["removed"], "seconds": s["seconds"]})
    for g in groups:
        if len(g["substeps"]) == 1 and g["substeps"][0]["step"] == g["step"]:
            del g["substeps"]
    return groups


def _manifest_body(ctx: Context, units: list, filtered: list[dict[str, Any]],
                   dedup: dict[str, list[dict[str, Any]]], final: list[dict[str, Any]],
                   timings: dict[str, float]) -> dict[str, Any]:
    cfg = ctx.config
    out = Path(ctx.out)
    records = sum(p["records"] for p in filtered)
    kept = sum(p["kept"] for p in final)
    removed = sum(p["removed"] for p in final)
    funnel = _group_funnel(merge_steps([p["steps"] for p in filtered] + [p["steps"] for p in final]))
    # the dedup steps' time is spent in their own stages, not in the final write
    for entry in funnel:
        kinds = {"exact": ("exact-keys", "exact-dups"),
                 "near": ("near-signatures", "near-band", "near-clusters")}.get(entry["step"], ())
        if kinds:
            entry["seconds"] = round(sum(p["task_seconds"] for k in kinds for p in dedup.get(k, [])), 3)
    _check_reconciles(records, kept, removed, funnel)
    hist: dict[str, Any] = {"length_extracted": [], "language_score": [], "length_kept": []}
    for p in filtered:
        hist["length_extracted"] = add_counts(hist["length_extracted"], p["hist"]["length_extracted"])
        hist["language_score"] = add_counts(hist["language_score"], p["hist"]["language_score"])
    for p in final:
        hist["length_kept"] = add_counts(hist["length_kept"], p["hist"]["length_kept"])
    clusters: dict[str, Any] = {}
    if "exact-dups" in dedup:
        sizes: dict[str, int] = {}
        for p in dedup["exact-dups"]:
            for s, c in p["cluster_sizes"].items():
                sizes[s] = sizes.get(s, 0) + c
        clusters["exact"] = {"clusters": sum(p["clusters"] for p in dedup["exact-dups"]),
                             "cluster_sizes": dict(sorted(sizes.items(), key=lambda kv: int(kv[0])))}
    if "near-clusters" in dedup:
        bands, rows = cfg.near.band_rows()
        c = dedup["near-clusters"][0]
        clusters["near"] = {
            "bands": bands, "rows": rows,
            "candidate_pairs": sum(p["candidates"] for p in dedup["near-band"]),
            "verified_pairs": c["pairs"], "clusters": c["clusters"],
            "cluster_sizes": c["cluster_sizes"]}
    return {
        "records": records, "kept": kept, "removed": removed,
        "kept_chars": sum(p["kept_chars"] for p in final),
        "funnel": funnel,
        "duplicates": clusters,
        "histograms": {"length_edges": LENGTH_EDGES.tolist(), "score_edges": SCORE_EDGES.tolist(),
                       **hist},
        "outputs": {
            "kept": sorted(p.relative_to(out).as_posix() for p in (out / "kept").glob("part-*.parquet")),
            "removed": sorted(p.relative_to(out).as_posix()
                              for p in (out / "removed").glob("part-*.parquet")),
            "report": "report.html",
        },
        "sources": sorted({p.source for u in units for p in u.pieces}),
        "work_units": {"input_files": len({p.path for u in units for p in u.pieces}),
                       "shards": len(units), "key_partitions": ctx.parts},
        "stage_seconds": timings,
        "execution": cfg.execution(),
    }


def _check_reconciles(records: int, kept: int, removed: int, funnel: list[dict[str, Any]]) -> None:
    """Every record ends kept or removed, and each step starts with what the last one left."""
    problems = []
    if records != kept + removed:
        problems.append(f"{records} records read but {kept} kept + {removed} removed")
    for prev, cur in zip(funnel, funnel[1:]):
        if prev["out"] != cur["in"]:
            problems.append(f"{prev['step']} passed {prev['out']} documents, {cur['step']} got {cur['in']}")
    for g in funnel:
        if g["in"] - g["out"] != sum(g["removed"].values()):
            problems.append(f"{g['step']}: {g['in']} in, {g['out']} out, "
                            f"{sum(g['removed'].values())} removals recorded")
    if funnel and funnel[-1]["out"] != kept:
        problems.append(f"the last step passed {funnel[-1]['out']} documents but {kept} were kept")
    if problems:  # a bug, not a user error: keep the traceback
        raise RuntimeError("curate: counts do not reconcile: " + "; ".join(problems))


def _attach_survivor_texts(ctx: Context, examples: dict[str, dict[str, Any]]) -> None:
    """Give each duplicate example the text of the document it duplicates."""
    for ex in examples.values():
        gid = ex.get("duplicate_gid")
        if gid is None:
            continue
        shard = int(ctx.shard_of(np.array([gid]))[0])
        table = shard_table(ctx, shard, ["text"])
        text = table.column("text")[int(gid) - ctx.offsets[shard]].as_py()
        ex["duplicate_text"] = text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " [...]"

