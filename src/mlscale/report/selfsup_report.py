"""RUN/report.html of a self-supervised run (simclr, dino, mae), written by `mlscale
evaluate RUN`: the probe's result, the k-NN probe during training against raw pixels
under the same rule, the collapse statistics (embedding spread; DINO's teacher entropy
and teacher-to-student KL), DINO's class-token attention maps, MAE's reconstructions of
validation images, and the run's config.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlscale.artifacts import atomic_write_text, read_json
from mlscale.config import to_dict
from mlscale.html import Page, escape, figure_to_data_uri, image
from mlscale.report.run_report import (_axes, _cards, _config_section, _fmt,
                                       _smooth, image_run_cards, loss_figure, render_report,
                                       throughput_figure)

EXAMPLES = 6
SPECTRUM_IMAGES = 2000


def probe_figure(metrics: list[dict[str, Any]], pixels_top1: float | None) -> str | None:
    """The k-NN top-1 at each evaluation, and raw pixels under the same rule."""
    points = [(m["step"], m["knn_top1"]) for m in metrics if m.get("knn_top1") is not None]
    if not points:
        return None
    fig, ax = _axes()
    steps, top1 = np.array(points, dtype=float).T
    ax.plot(steps, top1, "o-", color="#e45756", lw=1.6, ms=4, label="k-NN on the features")
    if pixels_top1 is not None:
        ax.axhline(pixels_top1, color="#555", ls="--", lw=1.1, label=f"k-NN on raw pixels ({pixels_top1:.1%})")
    ax.set_xlabel("step")
    ax.set_ylabel("val top-1")
    ax.set_title("k-NN probe during training (k=20, T=0.07, cosine)")
    ax.legend(frameon=False)
    return figure_to_data_uri(fig)


def collapse_figure(metrics: list[dict[str, Any]], prototypes: int) -> str | None:
    """Embedding spread per step; for DINO also the teacher's entropy (against ln K) and
    the teacher-to-student KL on a second axis."""
    rows = [m for m in metrics if m.get("spread") is not None]
    if not rows:
        return None
    fig, ax = _axes()
    steps = np.array([m["step"] for m in rows], dtype=float)
    spread = np.array([m["spread"] for m in rows], dtype=float)
    ax.plot(steps, _smooth(spread, max(1, len(spread) // 50)), color="#4c78a8", lw=1.6, label="spread")
    ax.set_ylim(0, max(1.05, float(spread.max()) * 1.05))
    ax.set_xlabel("step")
    ax.set_ylabel("embedding spread (1 = sphere, 0 = a point)")
    if rows[0].get("teacher_entropy") is not None:
        right = ax.twinx()
        for key, color, name in (("teacher_entropy", "#f58518", "teacher entropy"),
                                 ("teacher_kl", "#54a24b", "teacher-to-student KL")):
            values = np.array([m[key] for m in rows], dtype=float)
            right.plot(steps, _smooth(values, max(1, len(values) // 50)), color=color, lw=1.4, label=name)
        if prototypes > 1:
            right.axhline(math.log(prototypes), color="#f58518", ls=":", lw=1, label="ln K (a flat teacher)")
        right.set_ylabel("nats")
        right.legend(frameon=False, loc="upper right")
    ax.legend(frameon=False, loc="upper left")
    ax.set_title("Collapse watch")
    return figure_to_data_uri(fig)


def spectrum_figure(features: torch.Tensor) -> str:
    """Per-dimension std of the L2-normalised features (sorted; about 1/sqrt(D) each when
    they fill the sphere) and the singular values of the centred features: a few large
    ones and a tail near zero is a dimensional collapse."""
    import matplotlib.pyplot as plt

    z = torch.nn.functional.normalize(features.float(), dim=1)
    std = z.std(dim=0).sort(descending=True).values.numpy()
    sv = torch.linalg.svdvals(z - z.mean(0)).numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 3.2), layout="constrained")
    a.bar(np.arange(len(std)), std, width=1.0, color="#4c78a8")
    a.axhline(1 / math.sqrt(len(std)), color="#555", ls="--", lw=1, label="1/sqrt(D)")
    a.set_xlabel("dimension (sorted)")
    a.set_ylabel("std")
    a.set_title("Per-dimension spread")
    a.legend(frameon=False)
    b.semilogy(np.arange(1, len(sv) + 1), np.maximum(sv, 1e-12), color="#e45756")
    b.set_xlabel("rank")
    b.set_ylabel("singular value")
    b.set_title("Spectrum of the features")
    for ax in (a, b):
        ax.spines[["top", "right"]].set_visible(False)
    return figure_to_data_uri(fig)


def image_grid(rows: list[tuple[str, np.ndarray]], heat: bool = False) -> str:
    """Rows of images ([n, H, W] or [n, H, W, 3], values in [0, 1]) with row labels; with
    `heat`, rows after the first are heat maps, each scaled to its own maximum."""
    import matplotlib.pyplot as plt

    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 0.8, 1.35 * len(rows)), squeeze=False,
                             layout="constrained")
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            if heat and r > 0:
                ax.imshow(imgs[c], cmap="inferno", vmin=0, vmax=float(imgs[c].max()) or 1)
            else:
                ax.imshow(imgs[c], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
    return figure_to_data_uri(fig)


def _pictures(images: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, C] -> [n, H, W] (grey) or [n, H, W, 3] in [0, 1]."""
    x = images.astype(np.float32) / 255
    return x[..., 0] if x.shape[-1] == 1 else x


def attention_section(network: Any, marker: dict[str, Any], val_images: np.ndarray) -> str:
    from mlscale.tasks import augment
    from mlscale.tasks.selfsup.attention import class_token_attention

    x = augment.to_float(val_images, marker["mean"], marker["std"])
    maps = class_token_attention(network.backbone, x).numpy()  # [n, heads, gh, gw]
    rows = [("image", _pictures(val_images))] + [(f"head {h + 1}", maps[:, h]) for h in range(maps.shape[1])]
    return image(image_grid(rows, heat=True), "class-token attention maps",
                 "The teacher's last block: attention of the class token to each patch, one row per head "
                 "(brighter = more attention), for validation images.")


def reconstruction_section(network: Any, cfg: Any, marker: dict[str, Any], val_images: np.ndarray) -> str:
    from mlscale.tasks.selfsup.mae import reconstruct

    out = reconstruct(network, val_images, cfg, marker["mean"], marker["std"])
    rows = [(name, out[key].permute(0, 2, 3, 1).squeeze(-1).numpy())
            for name, key in (("image", "input"), (f"{cfg.mae.mask_ratio:.0%} masked", "masked"),
                              ("reconstruction", "reconstruction"))]
    return image(image_grid(rows), "MAE reconstructions",
                 "Validation images, what the encoder saw, and the decoder's reconstruction (visible patches "
                 "shown as they were).")


def _training_section(run_dir: Path, metrics: list[dict[str, Any]], pixels_top1: float | None,
                      prototypes: int) -> str:
    cards = image_run_cards(run_dir)
    figs = [f for f in ((loss_figure(metrics, unit="image"), "training loss", "The method's loss each step."),
                        (probe_figure(metrics, pixels_top1), "k-NN probe during training",
                         "Val images classified by their 20 nearest train images in feature space."),
                        (collapse_figure(metrics, prototypes), "collapse statistics",
                         "Spread near 0, a teacher entropy pinned at ln K, or a KL at 0 is a collapse."),
                        (throughput_figure(metrics, unit="image"), "throughput", "Images per second each step."))
            if f[0]]
    return cards + '<div class="figures">' + "".join(image(u, a, c) for u, a, c in figs) + "</div>"


def build_selfsup_report(run_dir: str | Path, result: dict[str, Any], data_dir: str | Path | None = None) -> str:
    """The HTML of RUN/report.html for a probe `result` of `evaluate_features`."""
    from mlscale.images.data import ImageData
    from mlscale.tasks.selfsup.base import load_network, monitor_rows
    from mlscale.runtime import Runtime
    from mlscale.tasks.selfsup import probe
    from mlscale.tasks.selfsup.probe import pixel_knn_top1
    from mlscale.train.metrics import read_metrics

    run_dir = Path(run_dir)
    cls, cfg, network, marker, step = load_network(run_dir, result.get("step"))
    metrics = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    data = ImageData(Path(data_dir) if data_dir is not None else Path(result["data"]))
    train, val = data.split("train"), data.split("val")
    pixels = None
    if len(val) and int(np.min(train.labels)) >= 0:
        bank, queries = monitor_rows(cfg, len(train), len(val))
        pixels = pixel_knn_top1(train.images[bank], train.labels[bank], val.images[queries], val.labels[queries],
                                data.num_classes)
    prototypes = getattr(getattr(cfg, "dino", None), "out_dim", 0)
    page = Page(f"mlscale {cls.name}: {run_dir.name}", f"{run_dir.resolve()} · step {step} · report written "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    key = "knn_top1" if "knn_top1" in result else "linear_top1"
    page.section("Features", _cards([(f"{result['probe']} probe top-1", f"{result[key]:.2%}"),
                                     ("raw pixels, k-NN", f"{pixels:.2%}" if pixels is not None else "n/a"),
                                     ("images", _fmt(result.get("images"))),
                                     ("feature width", _fmt(result.get("feature_dim")))])
                 + f"<p>Frozen features of the {escape(result.get('split', 'val'))} split of "
                   f"{escape(result.get('data', ''))}, probed; raw pixels on the bank and queries of the probe "
                   "during training.</p>")
    page.section("Training", _training_section(run_dir, metrics, pixels, prototypes))
    examples = val.images[:EXAMPLES] if len(val) else train.images[:EXAMPLES]
    sample = val if len(val) else train
    feats = probe.features(network.backbone, sample.images[:SPECTRUM_IMAGES], marker["mean"], marker["std"],
                           Runtime(device=torch.device("cpu"), dtype=torch.float32))
    page.section("Embedding spread", image(spectrum_figure(feats), "per-dimension spread and spectrum",
                                           f"Backbone features of {len(feats):,} images."))
    with torch.no_grad():
        if cls.name == "dino" and cfg.model.pool == "cls":
            page.section("Attention maps", attention_section(network, marker, np.asarray(examples)))
        if cls.name == "mae":
            page.section("Reconstructions", reconstruction_section(network, cfg, marker, np.asarray(examples)))
    page.section("Configuration", _config_section(read_json(run_dir / "config.json"), to_dict(cls.config_cls())))
    return render_report(page)


def write_selfsup_report(run_dir: str | Path, result: dict[str, Any], data_dir: str | Path | None = None) -> Path:
    """Write RUN/report.html atomically (see `build_selfsup_report`); returns its path."""
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, build_selfsup_report(run_dir, result, data_dir))
    return path
