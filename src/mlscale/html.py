"""Small building blocks for self-contained HTML reports.

A report is one HTML file with no external requests: figures are embedded as base64 PNG
data URIs and the style sheet is inline, so the file can be mailed, archived or opened
from a cluster's shared disk. Every piece of text that comes from data is escaped.
On the ground floor, so that every stage can write its own report (curate's report.html)
as well as the reports on whole runs (`mlscale.report`).
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
p.subtitle { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f4f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.sub td:first-child { padding-left: 2em; color: #555; }
img { max-width: 100%; height: auto; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures figure { margin: 0; flex: 1 1 460px; max-width: 640px; }
figcaption { color: #555; font-size: 0.88em; }
pre.snippet { white-space: pre-wrap; word-break: break-word; background: #f7f7f9;
              border: 1px solid #e3e3e8; padding: 0.6em; font-size: 0.85em; max-height: 16em;
              overflow: auto; margin: 0.3em 0 0.8em 0; }
.muted { color: #777; font-size: 0.9em; }
"""


def escape(text: Any) -> str:
    """HTML-escape any value's string form (quotes included, so it is safe in attributes)."""
    return html.escape(str(text), quote=True)


def figure_to_data_uri(fig: Any, dpi: int = 110, tight: bool = False) -> str:
    """Render a matplotlib figure to a `data:image/png;base64,...` URI and close it.

    `tight` crops to the drawn area, at the cost of drawing twice; figures made with
    `layout="constrained"` need no cropping.
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    # no Software entry: the same figure gives the same bytes whatever matplotlib's version
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None,
                metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image(uri: str, alt: str, caption: str = "") -> str:
    """An embedded figure with alt text and an optional caption."""
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{escape(uri)}" alt="{escape(alt)}">{cap}</figure>'


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{escape('' if value is None else value)}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:,.3g}</td>'
    return f"<td>{escape(value)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; numbers are right-aligned with thousands separators, text escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and i < len(row_classes) and row_classes[i] else ""
        attr = f' class="{escape(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(_cell(v) for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass
class Page:
    """An HTML page built from titled sections of ready HTML; `render()` gives the file."""

    title: str
    subtitle: str = ""
    sections: list[tuple[str, str]] = field(default_factory=list)

    def section(self, title: str, body_html: str) -> "Page":
        """Append a section (`body_html` must already be escaped / built with these helpers)."""
        self.sections.append((title, body_html))
        return self

    def render(self) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(self.title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{escape(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f'<p class="subtitle">{escape(self.subtitle)}</p>')
        for title, body in self.sections:
            parts.append(f"<section><h2>{escape(title)}</h2>{body}</section>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"
