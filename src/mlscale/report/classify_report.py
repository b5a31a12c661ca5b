"""RUN/report.html of an image classifier (`mlscale train --task classify`), written by
`mlscale evaluate RUN`: training curves, accuracy (top-1, top-5, per class), the
confusion matrix, the worst-confused pairs with example images, and the run's config.

Read from the run's own files (metrics.jsonl, manifest.json, config.json) and the result
of `evaluate_classifier`; the example images need its per-image predictions (the private
key `_predicted`, in the order of the evaluated split), the images come from that split.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mlscale.artifacts import atomic_write_text, read_json
from mlscale.config import to_dict
from mlscale.html import Page, escape, figure_to_data_uri, image, table
from mlscale.report.run_report import (_axes, _cards, _config_section, _fmt,
                                       _smooth, image_run_cards, loss_figure, render_report,
                                       throughput_figure)

WORST_PAIRS = 5
EXAMPLES = 8
PREDICTED = "_predicted"
"""Key of the per-image predicted labels in `evaluate_classifier`'s result."""
NO_IMAGES = '<span class="muted">no images</span>'


def accuracy_figure(metrics: list[dict[str, Any]]) -> str | None:
    """Train accuracy per step (raw and smoothed) and val top-1 / top-5 at each evaluation."""
    train = [(m["step"], m["accuracy"]) for m in metrics if m.get("accuracy") is not None]
    val = [(m["step"], m["top1"], m.get("top5")) for m in metrics if m.get("top1") is not None]
    if not train and not val:
        return None
    fig, ax = _axes()
    if train:
        steps, acc = np.array(train, dtype=float).T
        ax.plot(steps, acc, color="#4c78a8", alpha=0.25, lw=0.8)
        ax.plot(steps, _smooth(acc, max(1, len(acc) // 50)), color="#4c78a8", lw=1.6, label="train")
    if val:
        vs = [v[0] for v in val]
        ax.plot(vs, [v[1] for v in val], "o-", color="#e45756", lw=1.6, ms=4, label="val top-1")
        if all(v[2] is not None for v in val):
            ax.plot(vs, [v[2] for v in val], "s--", color="#f58518", lw=1.2, ms=3, label="val top-5")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Accuracy")
    ax.legend(frameon=False)
    return figure_to_data_uri(fig)


def confusion_figure(confusion: np.ndarray, classes: list[str]) -> str:
    """The confusion matrix as a heat map (rows: true class, columns: predicted), with counts."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(classes)
    side = max(4.5, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side), layout="constrained")
    im = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8, label="images")
    names = [c[:18] for c in classes]
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    top = confusion.max() or 1
    size = max(5, min(9, 90 // max(n, 1)))
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=size,
                        color="white" if confusion[i, j] > top / 2 else "#1d1d1f")
    ax.set_title("Confusion matrix")
    return figure_to_data_uri(fig)


def worst_pairs(confusion: np.ndarray, k: int = WORST_PAIRS) -> list[tuple[int, int, int]]:
    """The `k` largest off-diagonal cells (true, predicted, count), largest first; no empty ones."""
    off = confusion.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    cells = [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape))]
    return [c for c in cells if c[2] > 0]


def _pairs_section(confusion: np.ndarray, classes: list[str], result: dict[str, Any],
                   data_dir: Path | None) -> str:
    from mlscale.images.data import ImageData
    from mlscale.images.report import _thumb

    pairs = worst_pairs(confusion)
    if not pairs:
        return "<p>No image was confused with another class.</p>"
    predicted = result.get(PREDICTED)
    split = None
    if predicted is not None and data_dir is not None and Path(data_dir).is_dir():
        split = ImageData(data_dir).split(result.get("split", "val"))
        if len(split) != len(predicted):
            split = None
    rows = []
    for a, b, count in pairs:
        thumbs = ""
        if split is not None:
            labels, pred = np.asarray(split.labels), np.asarray(predicted)
            idx = np.flatnonzero((labels == a) & (pred == b))[:EXAMPLES]
            if len(idx):
                pixels = split.images[idx]
                thumbs = "".join(_thumb(p, f"{classes[a]} predicted as {classes[b]} (#{int(i)})")
                                 for p, i in zip(pixels, idx))
        share = count / max(int(confusion[a].sum()), 1)
        rows.append(f"<tr><td>{escape(classes[a])}</td><td>{escape(classes[b])}</td>"
                    f'<td class="num">{count:,}</td><td class="num">{share:.1%}</td>'
                    f'<td class="examples">{thumbs or NO_IMAGES}</td></tr>')
    return ('<p>The largest off-diagonal cells of the confusion matrix: images of the true class '
            f"predicted as the other, with up to {EXAMPLES} of them from the "
            f"{escape(result.get('split', 'val'))} split.</p>"
            '<table class="worst-pairs"><tr><th>true class</th><th>predicted as</th><th>images</th>'
            "<th>share of the class</th><th>examples</th></tr>" + "".join(rows) + "</table>")


def _accuracy_section(result: dict[str, Any], confusion: np.ndarray, classes: list[str]) -> str:
    off = confusion.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    rows = []
    for k, name in enumerate(classes):
        total = int(confusion[k].sum())
        worst = int(off[k].argmax())
        rows.append([name, total, int(confusion[k, k]), f"{confusion[k, k] / max(total, 1):.1%}",
                     f"{classes[worst]} ({int(off[k, worst])})" if off[k, worst] else ""])
    return (_cards([("top-1", f"{result['top1']:.2%}"), ("top-5", f"{result['top5']:.2%}"),
                    ("loss", _fmt(result.get("loss"))), ("images", _fmt(result.get("images"))),
                    ("checkpoint step", _fmt(result.get("step")))])
            + f"<p>The {escape(result.get('split', 'val'))} split of {escape(result.get('data', ''))}.</p>"
            + table(["class", "images", "correct", "accuracy", "most often predicted instead"], rows))


def _training_section(run_dir: Path) -> str | None:
    from mlscale.train.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    metrics = read_metrics(path)
    figs = [f for f in ((loss_figure(metrics, unit="image"), "train and validation loss",
                         "Train loss each step (light), smoothed (dark); val loss at each evaluation."),
                        (accuracy_figure(metrics), "train and validation accuracy",
                         "Train accuracy on the augmented batches; val top-1 and top-5 at each evaluation."),
                        (throughput_figure(metrics, unit="image"), "training throughput",
                         "Images per second each step.")) if f[0]]
    cards = image_run_cards(run_dir)
    return cards + '<div class="figures">' + "".join(image(u, a, c) for u, a, c in figs) + "</div>"


def _defaults(config: dict[str, Any]) -> dict[str, Any]:
    from mlscale.tasks.classify import ClassifyConfig
    from mlscale.train.config import model_config_class

    defaults = to_dict(ClassifyConfig())
    family = config.get("model", {}).get("family")
    if family and family != defaults.get("model", {}).get("family"):
        defaults["model"] = to_dict(model_config_class(family)())
    return defaults


def build_classify_report(run_dir: str | Path, result: dict[str, Any], data_dir: str | Path | None = None,
                          title: str | None = None, before: list[tuple[str, str]] | None = None) -> str:
    """The HTML of RUN/report.html for `result` of `evaluate_classifier` on the run;
    `title` and sections `before` the run's own for a page that shows more (an experiment)."""
    run_dir = Path(run_dir)
    data = Path(data_dir) if data_dir is not None else (Path(result["data"]) if result.get("data") else None)
    classes = read_json(run_dir / "classes.json")
    confusion = np.asarray(result["confusion"], dtype=np.int64)
    page = Page(title or f"mlscale classifier: {run_dir.name}",
                f"{run_dir.resolve()} · step {result.get('step')} · report written "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for name, body in before or []:
        page.section(name, body)
    training = _training_section(run_dir)
    if training is not None:
        page.section("Training", training)
    page.section("Accuracy", _accuracy_section(result, confusion, classes))
    page.section("Confusion matrix", image(confusion_figure(confusion, classes), "confusion matrix",
                                           "Rows: true class; columns: predicted class; counts of images."))
    page.section("Worst-confused pairs", _pairs_section(confusion, classes, result, data))
    config_path = run_dir / "config.json"
    if config_path.is_file():
        config = read_json(config_path)
        page.section("Configuration", _config_section(config, _defaults(config)))
    return render_report(page)


def write_classify_report(run_dir: str | Path, result: dict[str, Any], data_dir: str | Path | None = None) -> Path:
    """Write RUN/report.html atomically (see `build_classify_report`); returns its path."""
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, build_classify_report(run_dir, result, data_dir))
    return path
