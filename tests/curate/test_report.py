"""report.html: self-contained, escaped, with the funnel, histograms and examples; and the
small HTML helpers it is built from. The page is rendered in headless Chromium."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest

from mlscale.curate.report import build_report, summary_lines
from mlscale.html import Page, escape, figure_to_data_uri, image, table


def test_html_helpers_escape_format_and_embed():
    assert escape('<a href="x">&') == "&lt;a href=&quot;x&quot;&gt;&amp;"
    html = table(["name", "count"], [["<b>", 1234567], ["x", 0.5]], ["sub", ""])
    assert "&lt;b&gt;" in html and "1,234,567" in html and 'class="num"' in html
    assert '<tr class="sub">' in html
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    uri = figure_to_data_uri(fig)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    page = Page("T & T", "sub").section("One", image(uri, "alt <text>", "cap")).render()
    assert page.startswith("<!DOCTYPE html>") and "<h2>One</h2>" in page
    assert "T &amp; T" in page and 'alt="alt &lt;text&gt;"' in page


def test_report_of_a_run_is_complete_and_self_contained(reference):
    html = (reference.out / "report.html").read_text("utf-8")
    for section in ("Summary", "Funnel", "Removal reasons", "Distributions", "Near duplicates",
                    "One example of each drop reason", "Settings"):
        assert f"<h2>{section}</h2>" in html, section
    # funnel, document length, language score and cluster size figures, embedded
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == 4
    assert not re.search(r'<(?:img|script|link)[^>]+(?:src|href)="(?:https?:)?//', html)
    # an example of each drop reason the run had, duplicates beside their survivor
    for g in reference.manifest["funnel"]:
        for reason in g["removed"]:
            assert f"<h3>{g['step']}: {reason}</h3>" in html
    assert "which was kept:" in html


def test_example_text_is_escaped_not_rendered(reference):
    body = reference.manifest
    examples = {"read/malformed": {"id": "x#1", "step": "read", "reason": "malformed",
                                   "detail": "<b>bad</b>", "url": "", "source": "x.jsonl",
                                   "text": "<script>alert(1)</script>"}}
    html = build_report(body, examples, body["config"])
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;bad&lt;/b&gt;" in html


def test_summary_lines_show_each_step_and_where_things_are(reference):
    lines = summary_lines(reference.manifest, reference.out)
    steps = [g["step"] for g in reference.manifest["funnel"]]
    assert [line.split()[0] for line in lines[1:1 + len(steps)]] == steps
    assert lines[-1] == f"report: {reference.out / 'report.html'}"


def test_report_renders_in_headless_chromium(reference, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.fail("headless Chromium is needed to render the report: apt-get install chromium "
                    "(.ci/run installs it)")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,1600",
                    (reference.out / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # a blank page compresses to a few kB; the report's text, tables and figures do not
    assert len(data) > 50_000
