"""DIR/report.html of `mlscale run`: one self-contained page for the whole experiment.

Read from the stages' own outputs (manifests, metrics.jsonl, samples), so it can be
rebuilt at any time: the curation funnel and removal reasons, duplicate clusters, token
counts, loss curves, throughput and MFU, evaluation, samples, and the configuration and
environment with the time each stage took.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlscale.artifacts import atomic_write_text, read_json
from mlscale.config import diff, to_dict
from mlscale.html import Page, escape, figure_to_data_uri, image, table

FIG_SIZE = (6.4, 3.4)
# on load, count the images the browser could decode: a test reads it back from the DOM
_IMAGE_CHECK = ("<script>window.addEventListener('load',function(){var n=0;"
                "document.querySelectorAll('img').forEach(function(i){if(i.naturalWidth>0)n++;});"
                "document.body.setAttribute('data-images-loaded',String(n));"
                "document.body.setAttribute('data-images-total',"
                "String(document.querySelectorAll('img').length));});</script>")
_EXTRA_STYLE = """<style>
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.card { border: 1px solid #e3e3e8; border-radius: 8px; padding: 0.6em 1em; min-width: 9em;
        background: #fafafc; }
.card .v { font-size: 1.45em; font-weight: 600; }
.card .k { color: #666; font-size: 0.85em; }
pre.sample { white-space: pre-wrap; background: #fcfbf7; border-left: 3px solid #c9a227;
             padding: 0.6em 0.9em; font-size: 0.9em; }
pre.sample b { color: #8a6d00; }
pre.config { background: #f7f7f9; border: 1px solid #e3e3e8; padding: 0.6em; font-size: 0.8em;
             max-height: 28em; overflow: auto; }
</style>"""


def render_report(page: Page) -> str:
    """A report page's HTML with the report styles and the image-load check added."""
    html = page.render()
    return html.replace("</head>", _EXTRA_STYLE + "</head>", 1).replace("</body>", _IMAGE_CHECK + "</body>", 1)


def image_run_cards(run_dir: Path) -> str:
    """The summary cards of an image run (parameters, steps, images, speed, time, device)
    from RUN/manifest.json."""
    manifest = read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").is_file() else {}
    s = manifest.get("summary", {})
    return _cards([("parameters", f"{s['parameters'] / 1e6:.3f} M" if s.get("parameters") else "n/a"),
                   ("steps", _fmt(s.get("steps"))), ("images seen", _fmt(s.get("images"))),
                   ("images / s", _fmt(s.get("images_per_s"), 1)),
                   ("training seconds", _fmt(s.get("seconds"), 1)), ("device", s.get("device", "n/a"))])


def _read(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


def _axes():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIG_SIZE, layout="constrained")
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


# ---------------------------------------------------------------------------- figures
def loss_figure(metrics: list[dict[str, Any]], unit: str = "token") -> str | None:
    """Train loss per step (raw and smoothed) and validation loss at each evaluation."""
    train = [(m["step"], m["train_loss"]) for m in metrics if m.get("train_loss") is not None]
    val = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    if not train:
        return None
    fig, ax = _axes()
    steps, loss = np.array(train, dtype=float).T
    ax.plot(steps, loss, color="#4c78a8", alpha=0.25, lw=0.8)
    ax.plot(steps, _smooth(loss, max(1, len(loss) // 50)), color="#4c78a8", lw=1.6, label="train")
    if val:
        vs, vl = np.array(val, dtype=float).T
        ax.plot(vs, vl, "o-", color="#e45756", lw=1.6, ms=4, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(f"cross entropy (nats / {unit})")
    ax.set_title("Loss")
    ax.legend(frameon=False)
    return figure_to_data_uri(fig)


def throughput_figure(metrics: list[dict[str, Any]], unit: str = "token") -> str | None:
    """Tokens (or `unit`s) per second per step (smoothed), with MFU on a second axis when known."""
    key = f"{unit}s_per_s"
    rows = [(m["step"], m[key], m.get("mfu")) for m in metrics if m.get(key)]
    if not rows:
        return None
    fig, ax = _axes()
    steps = np.array([r[0] for r in rows], dtype=float)
    tps = np.array([r[1] for r in rows], dtype=float)
    ax.plot(steps, tps, color="#54a24b", alpha=0.25, lw=0.8)
    ax.plot(steps, _smooth(tps, max(1, len(tps) // 50)), color="#54a24b", lw=1.6)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{unit}s / s", color="#2f6b2a")
    ax.set_ylim(0, float(np.percentile(tps, 99)) * 1.15)
    mfu = [r[2] for r in rows]
    if all(v is not None for v in mfu):
        right = ax.twinx()
        right.spines[["top"]].set_visible(False)
        lo, hi = ax.get_ylim()
        scale = float(np.median(np.array(mfu, dtype=float) / tps)) * 100
        right.set_ylim(lo * scale, hi * scale)
        right.set_ylabel("MFU (%)")
    ax.set_title("Training throughput")
    return figure_to_data_uri(fig)


# ---------------------------------------------------------------------------- sections
def _cards(items: Sequence[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{escape(v)}</div><div class="k">{escape(k)}</div></div>'
        for k, v in items) + "</div>"


def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else f"{x:,}")


def _stages_section(out: Path, stages: Sequence[str], state: dict[str, Any]) -> str:
    rows = []
    for s in stages:
        rec = state.get("stages", {}).get(s, {})
        done = rec.get("done")
        manifest = _read(out / s / "manifest.json")
        status = "finished" if done and manifest else ("interrupted" if rec.get("started") else "not run")
        own = manifest.get("seconds") if manifest else None
        rows.append([s, status, f"{done['seconds']:.1f}" if done else "", f"{own:.1f}" if own else "",
                     f"{s}/"])
    total = sum((state.get("stages", {}).get(s, {}).get("done") or {}).get("seconds", 0.0) for s in stages)
    return (table(["stage", "status", "wall seconds (last run)", "seconds in its manifest", "output"], rows)
            + f'<p class="muted">Total wall time of the stages as last run: {total:.1f} s. '
            "A stage that was up to date keeps the time of the run that made it.</p>")


def _curate_section(out: Path) -> str | None:
    from mlscale.curate.report import cluster_figure, funnel_figure, funnel_table, reasons_table

    m = _read(out / "curate" / "manifest.json")
    if m is None:
        return None
    records = m["records"]
    parts = [_cards([("records read", _fmt(records)), ("documents kept", _fmt(m["kept"])),
                     ("removed", _fmt(m["removed"])), ("characters kept", _fmt(m.get("kept_chars", 0)))]),
             '<div class="figures">', image(funnel_figure(m["funnel"], records),
                                            "documents left after each curation step",
                                            "Documents left after each step.")]
    clusters = cluster_figure(m.get("duplicates", {}))
    if clusters:
        parts.append(image(clusters, "duplicate cluster sizes",
                           "Clusters of duplicates by size; one document of each is kept."))
    parts.append("</div>")
    parts.append("<h3>Funnel</h3>" + funnel_table(m["funnel"], records))
    parts.append("<h3>What was removed, and why</h3>" + reasons_table(m["funnel"], records))
    dups = m.get("duplicates", {})
    rows = []
    for kind, d in dups.items():
        sizes = d.get("cluster_sizes", {})
        removed = sum((int(k) - 1) * v for k, v in sizes.items())
        rows.append([kind, d.get("clusters", 0), removed,
                     ", ".join(f"{v}x{k}" for k, v in sizes.items()) or "none"])
    if rows:
        parts.append("<h3>Duplicate clusters</h3>"
                     + table(["kind", "clusters", "documents removed", "clusters x size"], rows))
        near = dups.get("near")
        if near:
            parts.append(f'<p class="muted">MinHash LSH, {near["bands"]} bands x {near["rows"]} rows: '
                         f'{near["candidate_pairs"]:,} candidate pairs, {near["verified_pairs"]:,} '
                         "verified.</p>")
    parts.append('<p class="muted">Every removed document, with its step and reason, is in '
                 'curate/removed/; examples of each reason are in '
                 '<a href="curate/report.html">curate/report.html</a>.</p>')
    return "".join(parts)


def _tokens_section(out: Path) -> str | None:
    m = _read(out / "tokenize" / "manifest.json")
    if m is None:
        return None
    tok = m["tokenizer"]
    rows = [[name, s["tokens"], s["documents"], s["bytes"],
             f"{s['bytes_per_token']:.3f}" if s.get("bytes_per_token") else "n/a", len(s["shards"])]
            for name, s in m["splits"].items()]
    return (f"<p>Tokenizer: <b>{escape(tok['kind'])}</b>, vocabulary {tok['vocab_size']:,}, "
            f"token ids stored as {escape(m['dtype'])}; split by {escape(m.get('split_by', ''))}.</p>"
            + table(["split", "tokens", "documents", "UTF-8 bytes", "bytes / token", "shards"], rows))


def _training_section(out: Path) -> tuple[str | None, dict[str, Any] | None]:
    from mlscale.train.metrics import read_metrics

    m = _read(out / "pretrain" / "manifest.json")
    path = out / "pretrain" / "metrics.jsonl"
    if m is None or not path.is_file():
        return None, None
    s = m["summary"]
    metrics = read_metrics(path)
    steps = [r for r in metrics if r.get("tokens_per_s")]
    tps = float(np.median([r["tokens_per_s"] for r in steps])) if steps else None
    mfus = [r["mfu"] for r in steps if r.get("mfu") is not None]
    mfu = float(np.median(mfus)) if mfus else None
    figs = [f for f in ((loss_figure(metrics), "train and validation loss",
                         "Train loss each step (light), smoothed (dark); validation loss at each evaluation."),
                        (throughput_figure(metrics), "training throughput",
                         "Tokens per second each step; the right axis reads the same curve as MFU.")) if f[0]]
    cfg = read_json(out / "pretrain" / "config.json") if (out / "pretrain" / "config.json").is_file() else {}
    model = cfg.get("model", {})
    body = (_cards([("final val loss", _fmt(s.get("final_val_loss"))),
                    ("final train loss", _fmt(s.get("final_train_loss"))),
                    ("parameters", f"{s['parameters'] / 1e6:.2f} M"), ("steps", _fmt(s["steps"])),
                    ("tokens seen", _fmt(s["tokens"])),
                    ("tokens / s (median)", f"{tps:,.0f}" if tps else "n/a"),
                    ("MFU (median)", f"{mfu * 100:.2f} %" if mfu is not None else "n/a")])
            + '<div class="figures">' + "".join(image(u, a, c) for u, a, c in figs) + "</div>"
            + table(["", "value"], [
                ["model", f"{model.get('n_layer')} layers, {model.get('n_head')} heads, width "
                          f"{model.get('d_model')}, context {model.get('seq_len')}, vocabulary "
                          f"{model.get('vocab_size')}"],
                ["FLOPs per token (training, 6N + attention)", f"{s['flops_per_token']:,.0f}"],
                ["device", s.get("device", "")],
                ["training seconds", f"{s['seconds']:.1f}"],
            ])
            + ('<p class="muted">MFU = achieved model FLOP/s over the device\'s peak; on a CPU the '
               "peak is an estimate, so read it as a trend.</p>" if mfu is not None else
               '<p class="muted">MFU (achieved model FLOP/s over the device\'s peak) is shown on '
               "devices whose peak is known (GPUs); this run's device has none recorded.</p>"))
    return body, s


def _evaluation_section(out: Path) -> str | None:
    m = _read(out / "evaluate" / "metrics.json")
    if m is None:
        return None
    rows = [[k, _fmt(m.get(k))] for k in ("loss", "perplexity", "bits_per_byte", "bytes_per_token", "tokens")
            if k in m]
    return (f"<p>Every token of the <b>{escape(m.get('split') or '')}</b> split scored once, in "
            f"non-overlapping windows of the model's context, at checkpoint step {m.get('step')}.</p>"
            + table(["metric", "value"], rows))


def _scaling_section(out: Path) -> str | None:
    """The optional scaling stage: the fitted law with its intervals, and its plots."""
    import base64

    fit = _read(out / "scaling" / "fit" / "fit.json")
    if fit is None:
        return None
    ci = fit.get("ci") or {}
    names = [k for k in ("E", "A", "B", "alpha", "beta", "N_c", "D_c", "alpha_N", "alpha_D", "a", "b")
             if isinstance(fit.get(k), (int, float))]
    rows = [[k, _fmt(fit[k], 4), " - ".join(_fmt(v, 4) for v in ci[k]) if ci.get(k) else ""] for k in names]
    parts = [f"<p>The IsoFLOP sweep's runs ({escape(fit.get('table', {}).get('path', 'scaling/runs.csv'))}) "
             f"fitted with the <b>{escape(fit.get('law', ''))}</b> law.</p>",
             table(["parameter", "value", "95% interval"], rows), '<div class="figures">']
    for plot in fit.get("plots", []):
        p = Path(plot)
        if p.is_file():
            uri = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(image(uri, p.stem, p.stem))
    return "".join(parts) + "</div>"


def _finetune_section(out: Path) -> str | None:
    """The optional finetune stage: its summary."""
    m = _read(out / "finetune" / "manifest.json")
    if m is None:
        return None
    summary = m.get("summary", {})
    rows = [[k, _fmt(v) if isinstance(v, float) else v] for k, v in summary.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return "<p>The pretrained model fine-tuned by <code>mlscale finetune</code>.</p>" + table(["", ""], rows)


def _samples_section(out: Path, cfg: dict[str, Any]) -> str | None:
    samples = _read(out / "generate" / "samples.json")
    if samples is None:
        return None
    g = cfg.get("generate", {})
    parts = [f'<p class="muted">temperature {g.get("temperature")}, top-p {g.get("top_p")}, '
             f'top-k {g.get("top_k") or "off"}, {g.get("max_new_tokens")} new tokens; the prompt is '
             "in bold.</p>"]
    for s in samples:
        for text in s["samples"]:
            prompt = s["prompt"]
            parts.append(f'<pre class="sample"><b>{escape(prompt)}</b>{escape(text[len(prompt):])}</pre>')
    return "".join(parts)


def _environment_section(out: Path, stages: Sequence[str]) -> str:
    env: dict[str, Any] = {}
    for s in stages:
        m = _read(out / s / "manifest.json")
        if m:
            env.update(m.get("environment", {}))
    pretrain = _read(out / "pretrain" / "manifest.json")
    if pretrain:
        env["training device"] = pretrain["summary"].get("device", "")
    return table(["", "value"], [[k, str(v)] for k, v in env.items()])


def _config_section(config: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The settings that differ from the defaults first, then the whole config."""
    rows = []
    for line in diff(defaults, config):
        key, values = line.split(": ", 1)
        rows.append([key, values.split(" -> ", 1)[1], values.split(" -> ", 1)[0]])
    changed = (table(["setting", "value", "default"], rows) if rows
               else "<p>Every setting has its default value.</p>")
    return ("<h3>Settings that differ from the defaults</h3>" + changed
            + "<h3>Every setting</h3>" + '<pre class="config">' + escape(json.dumps(config, indent=2))
            + "</pre>")


def build_run_report(out: str | Path, cfg: Any, stages: Sequence[str], defaults: dict[str, Any]) -> str:
    """The HTML of DIR/report.html for experiment config `cfg` (a dataclass or a dict).

    `defaults`: every setting at its default, as a dict, for the table of what differs
    (the experiment passes its own: this layer does not import it).
    """
    out = Path(out)
    config = cfg if isinstance(cfg, dict) else to_dict(cfg)
    state = _read(out / "run-state.json") or {"stages": {}}
    training, summary = _training_section(out)
    evaluation = _read(out / "evaluate" / "metrics.json")
    page = Page(f"mlscale run: {config.get('name', 'experiment')}",
                f"{out.resolve()} · report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    headline = []
    if summary:
        headline += [("final val loss", _fmt(summary.get("final_val_loss"))),
                     ("parameters", f"{summary['parameters'] / 1e6:.2f} M")]
    if evaluation:
        headline += [("val perplexity", _fmt(evaluation.get("perplexity"), 2)),
                     ("val bits / byte", _fmt(evaluation.get("bits_per_byte"), 3))]
    page.section("Stages", _cards(headline) + _stages_section(out, stages, state))
    for title, body in (("Curation", _curate_section(out)), ("Tokens", _tokens_section(out)),
                        ("Training", training), ("Evaluation", _evaluation_section(out)),
                        ("Samples", _samples_section(out, config)),
                        ("Scaling law", _scaling_section(out)),
                        ("Fine-tuning", _finetune_section(out))):
        if body is not None:
            page.section(title, body)
    page.section("Configuration", _config_section(config, defaults))
    page.section("Environment", _environment_section(out, stages))
    return render_report(page)


def write_run_report(out: str | Path, cfg: Any, stages: Sequence[str], defaults: dict[str, Any]) -> Path:
    """Write DIR/report.html atomically (see `build_run_report`); returns its path."""
    path = Path(out) / "report.html"
    atomic_write_text(path, build_run_report(out, cfg, stages, defaults))
    return path
