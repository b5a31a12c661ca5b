"""OUT/report.html: what curation kept and removed, and why, in one self-contained page.

Sections: totals; the funnel per step (table and chart); removal reasons; histograms of
document length, language score and duplicate-cluster size (embedded PNGs); one example
of each drop reason (a duplicate beside the document it duplicates); the settings.
Also `summary_lines()`, the short funnel the command prints at the end.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlscale.artifacts import atomic_write_text
from mlscale.html import Page, escape, figure_to_data_uri, image, table

FIG_SIZE = (6.4, 3.4)


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "-"


def summary_lines(manifest: dict[str, Any], out: str | Path) -> list[str]:
    """A short funnel for the terminal: one line per step, then totals and the report."""
    records = manifest["records"]
    lines = [f"{'step':<10} {'in':>9} {'out':>9}  removed (top reasons)"]
    for g in manifest["funnel"]:
        top = sorted(g["removed"].items(), key=lambda kv: -kv[1])[:3]
        reasons = ", ".join(f"{r} {n}" for r, n in top)
        lines.append(f"{g['step']:<10} {g['in']:>9,} {g['out']:>9,}  "
                     f"{g['in'] - g['out']:,}{' (' + reasons + ')' if reasons else ''}")
    lines.append(f"kept {manifest['kept']:,} of {records:,} records ({_pct(manifest['kept'], records)}, "
                 f"{manifest.get('kept_chars', 0):,} characters) in {Path(out) / 'kept'}; "
                 f"removed {manifest['removed']:,} in {Path(out) / 'removed'}")
    lines.append(f"report: {Path(out) / manifest['outputs']['report']}")
    return lines


# ------------------------------------------------------------------------------ figures
def _axes(height: float = FIG_SIZE[1]):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(FIG_SIZE[0], height), layout="constrained")
    ax.spines[["top", "right"]].set_visible(False)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of documents
    return fig, ax


def funnel_figure(funnel: list[dict[str, Any]], records: int) -> str:
    labels = ["input"] + [g["step"] for g in funnel]
    values = [records] + [g["out"] for g in funnel]
    fig, ax = _axes(0.42 * len(labels) + 1.0)
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color="#4c78a8")
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:,} ({_pct(v, records)})", va="center", fontsize=9)
    ax.set_yticks(y, labels)
    ax.set_xlabel("documents left after the step")
    ax.set_xlim(0, max(values + [1]) * 1.35)
    return figure_to_data_uri(fig)


def _log_ticks(ax: Any, lo: float, hi: float) -> None:
    """Label a log10-valued x axis with 1, 10, 100, 1k, ... (cheaper than a log scale)."""
    names = {0: "1", 1: "10", 2: "100", 3: "1k", 4: "10k", 5: "100k", 6: "1M", 7: "10M"}
    ticks = [k for k in range(int(np.floor(lo)), int(np.ceil(hi)) + 1) if k in names]
    ax.set_xticks(ticks, [names[k] for k in ticks])


def _length_figure(hist: dict[str, Any]) -> str | None:
    edges = np.log10(np.asarray(hist["length_edges"]))
    before = np.asarray(hist.get("length_extracted") or [0] * (len(edges) - 1))
    after = np.asarray(hist.get("length_kept") or [0] * (len(edges) - 1))
    if not before.any() and not after.any():
        return None
    used = np.flatnonzero((before + after) > 0)
    lo, hi = edges[max(used[0] - 1, 0)], edges[min(used[-1] + 2, len(edges) - 1)]
    fig, ax = _axes()
    if before.any():
        ax.stairs(before, edges, fill=True, color="#c7c7c7", label="after extraction")
    if after.any():
        ax.stairs(after, edges, fill=True, color="#4c78a8", alpha=0.85, label="kept")
    ax.set_xlim(lo, hi)
    _log_ticks(ax, lo, hi)
    ax.set_xlabel("document length (characters)")
    ax.set_ylabel("documents")
    ax.legend(frameon=False)
    ax.set_title("Document length")
    return figure_to_data_uri(fig)


def _score_figure(hist: dict[str, Any], threshold: float | None) -> str | None:
    counts = np.asarray(hist.get("language_score") or [])
    if not counts.any():
        return None
    edges = np.asarray(hist["score_edges"])
    fig, ax = _axes()
    ax.stairs(counts, edges, fill=True, color="#f58518")
    ax.set_yscale("symlog", linthresh=1)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
        ax.text(threshold, counts.max(), f" threshold {threshold:g}", fontsize=9, va="top")
    ax.set_xlim(0, 1)
    ax.set_xlabel("score of the language identified")
    ax.set_ylabel("documents (log scale)")
    ax.set_title("Language score")
    return figure_to_data_uri(fig)


def cluster_figure(duplicates: dict[str, Any]) -> str | None:
    series = {k: v.get("cluster_sizes", {}) for k, v in duplicates.items() if v.get("cluster_sizes")}
    if not series:
        return None
    fig, ax = _axes()
    sizes = sorted({int(s) for v in series.values() for s in v})
    x = np.arange(len(sizes))
    width = 0.8 / len(series)
    colors = {"exact": "#54a24b", "near": "#e45756"}
    for i, (name, counts) in enumerate(series.items()):
        ax.bar(x + i * width, [counts.get(str(s), 0) for s in sizes], width=width,
               label=f"{name} duplicates", color=colors.get(name))
    ax.set_xticks(x + width * (len(series) - 1) / 2, [str(s) for s in sizes])
    ax.set_xlim(-0.6, max(len(sizes), 4) - 0.4)
    ax.set_xlabel("documents per cluster (one of each cluster is kept)")
    ax.set_ylabel("clusters")
    ax.legend(frameon=False)
    ax.set_title("Duplicate-cluster size")
    return figure_to_data_uri(fig)


# ----------------------------------------------------------------------------- sections
def _short(step: str, reason: str) -> str:
    """A reason without its step's prefix ('c4:too_few_sentences' -> 'too_few_sentences')."""
    return reason[len(step) + 1:] if reason.startswith(step + ":") else reason


def _reasons(step: str, removed: dict[str, int], limit: int | None = None) -> str:
    top = sorted(removed.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{_short(step, r)} ({n:,})" for r, n in top[:limit])
    if limit is not None and len(top) > limit:
        text += f", {len(top) - limit} more below"
    return text


def funnel_table(funnel: list[dict[str, Any]], records: int) -> str:
    rows, classes = [], []
    for g in funnel:
        subs = g.get("substeps", [])
        rows.append([g["step"], g["in"], g["out"], g["in"] - g["out"], _pct(g["out"], records),
                     _reasons(g["step"], g["removed"], 3 if subs else None), f"{g['seconds']:.2f}"])
        classes.append("")
        for sub in subs:
            rows.append([sub["step"], sub["in"], sub["out"], sub["in"] - sub["out"],
                         _pct(sub["out"], records), _reasons(sub["step"], sub["removed"]),
                         f"{sub['seconds']:.2f}"])
            classes.append("sub")
    return table(["step", "in", "out", "removed", "left of input", "reasons", "CPU seconds"],
                 rows, classes)


def reasons_table(funnel: list[dict[str, Any]], records: int) -> str:
    rows = []
    for g in funnel:
        for sub in g.get("substeps") or [g]:
            for reason, n in sorted(sub["removed"].items(), key=lambda kv: (-kv[1], kv[0])):
                rows.append([sub["step"], _short(sub["step"], reason), n, _pct(n, records)])
    if not rows:
        return "<p>Nothing was removed.</p>"
    return table(["step", "reason", "documents", "share of input"], rows)


def _examples_section(examples: dict[str, dict[str, Any]], funnel: list[dict[str, Any]]) -> str:
    if not examples:
        return "<p>Nothing was removed.</p>"
    order = [s["step"] for g in funnel for s in (g.get("substeps") or [g])]
    keys = sorted(examples, key=lambda k: (order.index(examples[k]["step"])
                                           if examples[k]["step"] in order else len(order), k))
    parts = []
    for key in keys:
        ex = examples[key]
        meta = [f"id <code>{escape(ex['id'])}</code>"]
        if ex.get("url"):
            meta.append(f"url {escape(ex['url'])}")
        if ex.get("source"):
            meta.append(f"source {escape(ex['source'])}")
        if ex.get("detail"):
            meta.append(f"detail: {escape(ex['detail'])}")
        text = ex.get("text") or ""
        body = (f'<pre class="snippet">{escape(text)}</pre>' if text
                else '<p class="muted">(no text: the record could not be read or had none)</p>')
        if ex.get("duplicate_of") is not None:
            body = (f"{body}<p class=\"muted\">duplicate of <code>{escape(ex['duplicate_of'])}</code>"
                    f" (cluster {escape(ex.get('cluster_id', ''))}), which was kept:</p>"
                    f"<pre class=\"snippet\">{escape(ex.get('duplicate_text', ''))}</pre>")
        parts.append(f"<h3>{escape(ex['step'])}: {escape(_short(ex['step'], ex['reason']))}</h3>"
                     f"<p class=\"muted\">{' · '.join(meta)}</p>{body}")
    return "".join(parts)


def _settings_table(config: dict[str, Any], execution: dict[str, Any]) -> str:
    rows: list[list[str]] = []

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                rows.append([prefix + k, repr(v)])

    walk({**config, **execution}, "")
    return "<details><summary>all settings</summary>" + table(["key", "value"], rows) + "</details>"


def build_report(body: dict[str, Any], examples: dict[str, dict[str, Any]],
                 config: dict[str, Any] | None = None) -> str:
    """The report page for a manifest `body` and the examples of each drop reason."""
    records = body["records"]
    funnel = body["funnel"]
    sources = body.get("sources", [])
    page = Page("mlscale curate report",
                f"{records:,} records from {len(sources)} input file(s): "
                f"{', '.join(sources[:6])}{' ...' if len(sources) > 6 else ''}")
    secs = sum(body.get("stage_seconds", {}).values())
    page.section("Summary", table(["", "value"], [
        ["records read", records],
        ["documents kept", f"{body['kept']:,} ({_pct(body['kept'], records)})"],
        ["documents removed", f"{body['removed']:,} ({_pct(body['removed'], records)})"],
        ["characters kept", body.get("kept_chars", 0)],
        ["wall-clock seconds (this invocation)", f"{secs:.1f}"],
        ["work units", f"{body['work_units']['shards']} shard(s), "
                       f"{body['work_units']['key_partitions']} key partition(s)"],
    ]))
    page.section("Funnel", image(funnel_figure(funnel, records), "documents left after each step")
                 + funnel_table(funnel, records)
                 + '<p class="muted">CPU seconds are summed over work units and workers.</p>')
    page.section("Removal reasons", reasons_table(funnel, records))
    hist = body["histograms"]
    threshold = None
    if config is not None:
        threshold = (config.get("language") or {}).get("threshold")
    figures = [f for f in (
        (_length_figure(hist), "document length", "Characters per document after extraction "
         "(grey) and of the documents kept (blue)."),
        (_score_figure(hist, threshold), "language score", "Score of the language identified, "
         "for every document that reached the language step."),
        (cluster_figure(body.get("duplicates", {})), "duplicate-cluster size",
         "Clusters of duplicates by size; all but one document of each are removed."),
    ) if f[0] is not None]
    if figures:
        page.section("Distributions", '<div class="figures">'
                     + "".join(image(uri, alt, cap) for uri, alt, cap in figures) + "</div>")
    dups = body.get("duplicates", {})
    if "near" in dups:
        n = dups["near"]
        page.section("Near duplicates", table(["", "value"], [
            ["LSH bands x rows", f"{n['bands']} x {n['rows']}"],
            ["candidate pairs (all bands)", n["candidate_pairs"]],
            ["pairs kept after verification", n["verified_pairs"]],
            ["clusters", n["clusters"]],
        ]))
    page.section("One example of each drop reason", _examples_section(examples, funnel))
    if config is not None:
        page.section("Settings", _settings_table(config, body.get("execution", {})))
    return page.render()


def write_report(path: str | Path, body: dict[str, Any], examples: dict[str, dict[str, Any]],
                 config: dict[str, Any] | None = None) -> None:
    """Write report.html atomically."""
    atomic_write_text(path, build_report(body, examples, config))
