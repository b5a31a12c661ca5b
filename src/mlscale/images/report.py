"""report.html of the images stage: samples per class, sizes, class balance, removals."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mlscale.artifacts import atomic_write_text
from mlscale.html import Page, escape, figure_to_data_uri, image, table

SAMPLES = 10
MAX_CLASSES = 100  # sample rows shown (the class-balance figure shows every class)
THUMB = 56


def _png_uri(pixels: np.ndarray) -> str:
    im = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    if max(im.size) < THUMB:
        im = im.resize((THUMB * im.size[0] // max(im.size), THUMB * im.size[1] // max(im.size)),
                       Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(pixels: np.ndarray, title: str) -> str:
    return (f'<img src="{_png_uri(pixels)}" alt="{escape(title)}" title="{escape(title)}" '
            f'style="width:{THUMB}px;height:auto;image-rendering:pixelated;margin:1px">')


def _sample_grid(g: Any) -> str:
    """Up to SAMPLES kept train-or-val images of each class (the first ones, deterministic)."""
    keep = g.keep if g.keep is not None else np.ones(len(g.labels), bool)
    rows = []
    ids = g.rows.column("id")
    groups = [(c, k) for k, c in enumerate(g.classes[:MAX_CLASSES])] or [("(unlabelled)", -1)]
    if g.classes and (g.labels[keep] < 0).any():
        groups.append(("(unlabelled)", -1))
    for name, k in groups:
        idx = np.flatnonzero(keep & (g.labels == k))[:SAMPLES]
        thumbs = "".join(_thumb(g.images(np.array([i]))[0], ids[int(i)].as_py()) for i in idx)
        rows.append(f"<tr><td>{escape(name)}</td><td>{thumbs}</td></tr>")
    more = (f'<p class="muted">The first {MAX_CLASSES} of {len(g.classes)} classes.</p>'
            if len(g.classes) > MAX_CLASSES else "")
    return "<table><tr><th>class</th><th>samples</th></tr>" + "".join(rows) + "</table>" + more


def _figures(g: Any, body: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = g.rows.column("width").to_numpy().astype(float)
    h = g.rows.column("height").to_numpy().astype(float)
    figs = []
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(np.sqrt(w * h), bins=40, color="#4477aa")
    ax.set_xlabel("original size, sqrt(width x height) pixels")
    ax.set_ylabel("images")
    figs.append((figure_to_data_uri(fig, tight=True), "sizes", "Original image sizes (decoded images)."))
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(np.log2(w / h), bins=40, color="#228833")
    ax.set_xlabel("log2(width / height)")
    ax.set_ylabel("images")
    figs.append((figure_to_data_uri(fig, tight=True), "aspect ratios", "Aspect ratios before the crop."))
    if g.classes:
        fig, ax = plt.subplots(figsize=(5, max(2.5, 0.25 * len(g.classes))))
        y = np.arange(len(g.classes))
        left = np.zeros(len(g.classes))
        for split, color in (("train", "#4477aa"), ("val", "#ee6677")):
            counts = np.array([body["splits"][split]["per_class"][c] for c in g.classes])
            ax.barh(y, counts, left=left, color=color, label=split)
            left += counts
        ax.set_yticks(y, [c[:24] for c in g.classes])
        ax.invert_yaxis()
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
        ax.set_xlabel("images kept")
        figs.append((figure_to_data_uri(fig, tight=True), "class balance", "Kept images per class and split."))
    plt.close("all")
    return '<div class="figures">' + "".join(image(u, a, c) for u, a, c in figs) + "</div>"


def _removals(g: Any, read: int) -> str:
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for r in g.removed:
        by_reason.setdefault(r["reason"], []).append(r)
    if not by_reason:
        return "<p>Nothing was removed.</p>"
    rows = [[reason, len(rs), f"{100 * len(rs) / max(read, 1):.2f}%", rs[0]["step"],
             "; ".join(f"{x['source']}" + (f" (duplicate of {x['duplicate_of']})" if x["duplicate_of"] else "")
                       for x in rs[:3])]
            for reason, rs in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))]
    html = table(["reason", "images", "share of read", "step", "examples"], rows)
    pairs = _duplicate_pairs(g)
    return html + (f"<h3>Duplicates beside what they duplicate</h3>{pairs}" if pairs else "")


def _duplicate_pairs(g: Any, limit: int = 8) -> str:
    ids = g.rows.column("id").to_pylist()
    where = {i: k for k, i in enumerate(ids)}
    cells = []
    for r in [x for x in g.removed if x["duplicate_of"]][:limit]:
        a, b = where[r["id"]], where[r["duplicate_of"]]
        pix = g.images(np.array([a, b]))
        cells.append(f"<tr><td>{escape(r['reason'])}</td><td>{_thumb(pix[0], r['id'])} "
                     f"{_thumb(pix[1], r['duplicate_of'])}</td></tr>")
    return ("<table><tr><th>reason</th><th>removed, kept</th></tr>" + "".join(cells) + "</table>"
            if cells else "")


def write_report(path: str | Path, body: dict[str, Any], g: Any, config: dict[str, Any]) -> None:
    """Write report.html (self-contained) for the gathered images `g` and manifest `body`."""
    c = body["counts"]
    page = Page("mlscale images report", f"{c['read']:,} images read from {len(body['sources'])} "
                f"input(s); shape {tuple(body['image_shape'])}")
    page.section("Summary", table(["", "value"], [
        ["images read", c["read"]], ["kept", c["kept"]],
        *[[f"kept in {s}", body["splits"][s]["images"]] for s in body["splits"]],
        ["removed", sum(c["removed"].values())], ["classes", len(body["classes"])],
        ["image shape (H, W, C)", str(tuple(body["image_shape"]))],
        ["seconds (decode, gather+dedup, write)", ", ".join(f"{v:.1f}" for v in body["timings"].values())],
    ]))
    page.section("Samples per class", _sample_grid(g))
    page.section("Sizes, aspect ratios and class balance", _figures(g, body))
    page.section("Removal reasons", _removals(g, c["read"]))
    page.section("Settings", table(["key", "value"], _flat(config)))
    atomic_write_text(path, page.render())


def _flat(d: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    out: list[list[Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append([f"{prefix}{k}", str(v)])
    return out
