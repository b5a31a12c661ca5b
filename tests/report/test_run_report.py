"""DIR/report.html of `mlscale run`, rendered in headless Chromium: its images decode and
its tables are there."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from experiment_helpers import write_tiny_experiment

from mlscale.cli import main

SECTIONS = ["Stages", "Curation", "Tokens", "Training", "Evaluation", "Samples", "Configuration",
            "Environment"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return name
    pytest.fail("Chromium is not installed: the report test renders report.html in headless "
                "Chromium; install it with `apt-get install -y chromium` (the CI script does)")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    # one thread: the tiny model gains nothing from two, and a shared machine's busy
    # OpenMP pool makes every step many times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the tiny experiment (real documents, a slice of Shakespeare, a 1-layer model): every
    # section of the report, in seconds
    root = tmp_path_factory.mktemp("report")
    toml = write_tiny_experiment(root)
    assert main(["run", str(toml), "--out", str(root / "out")]) == 0
    return root / "out" / "report.html"


def test_run_report_is_self_contained_with_every_section(report: Path) -> None:
    html = report.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html
    # no external requests: every image is embedded, no remote scripts or style sheets
    assert re.findall(r'<img src="([^"]{0,22})', html) and all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'<img src="([^"]{0,22})', html))
    assert not re.search(r'(src|href)="https?://', html)
    for expected in ("gopher_quality", "too_few_sentences", "Duplicate clusters", "final val loss",
                     "tokens / s (median)", "perplexity", "bits_per_byte", "ROMEO:", "python"):
        assert expected in html, expected


def test_run_report_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    browser = _chromium()
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total, "the page's load handler did not run:\n" + dom[:500]
    # the funnel, the loss curves and the throughput (and duplicate clusters when there are
    # any): all decoded by the browser
    assert int(total.group(1)) >= 3
    assert loaded.group(1) == total.group(1)
    assert dom.count("<table") >= 7
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in dom
