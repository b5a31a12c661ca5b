"""RUN/report.html of an image classifier, written by `mlscale evaluate RUN`: training
curves, accuracy, the confusion matrix, the worst-confused pairs with example images and
the config, in one self-contained page; the JSON on stdout is the evaluation alone."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from mlscale.cli import main
from mlscale.data import fashion_mnist_sample
from mlscale.html import escape
from mlscale.report.classify_report import worst_pairs

TINY = ["--model.d_model=32", "--model.n_layer=2", "--model.n_head=2", "--model.patch_size=7",
        "--train.batch_size=32", "--train.warmup_steps=3", "--train.lr=3e-3", "--train.min_lr=3e-4",
        "--train.device=cpu", "--train.log_every=10", "--train.eval_every=50", "--classify.eval_batch_size=500"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """A tiny classifier trained for 100 steps and `mlscale evaluate`d: (run, images, stdout, stderr)."""
    import torch

    # one thread: the tiny model gains nothing from two, and a shared machine's busy
    # OpenMP pool makes every step many times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _evaluate(tmp_path_factory.mktemp("classify-report"))
    finally:
        torch.set_num_threads(threads)


def _evaluate(root: Path) -> tuple[Path, Path, str, str]:
    images, run = root / "images", root / "run"
    assert main(["images", str(fashion_mnist_sample()), "--out", str(images)]) == 0
    assert main(["train", "--task", "classify", "--data", str(images), "--out", str(run),
                 "--train.max_steps=100", "--train.checkpoint_every=100", *TINY]) == 0
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["evaluate", str(run)]) == 0  # capsys is per test: capture by hand
    return run, images, out.getvalue(), err.getvalue()


def test_evaluate_prints_the_same_json_and_names_the_report_on_stderr(evaluated):
    run, _, out, err = evaluated
    result = json.loads(out)  # stdout is the JSON alone
    assert set(result) == {"run", "step", "data", "split", "images", "top1", "top5", "loss", "per_class",
                           "confusion"}
    assert result["images"] == 1000 and sum(map(sum, result["confusion"])) == 1000
    lines = [line for line in err.splitlines() if "report.html" in line]
    assert len(lines) == 1 and str(run / "report.html") in lines[0]


def test_the_report_is_self_contained_with_curves_confusion_matrix_and_worst_pairs(evaluated):
    run, images, out, _ = evaluated
    html = (run / "report.html").read_text()
    result = json.loads(out)
    # self-contained: every src and href is an embedded data URI (or a fragment)
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r[:60] for r in refs if
                                                                      not r.startswith(("data:", "#"))]
    for section in ("Training", "Accuracy", "Confusion matrix", "Worst-confused pairs", "Configuration"):
        assert f"<h2>{section}</h2>" in html
    assert 'alt="confusion matrix"' in html
    for alt in ("train and validation loss", "train and validation accuracy", "training throughput"):
        assert f'alt="{alt}"' in html
    classes = json.loads((images / "classes.json").read_text())
    assert all(f"<td>{escape(c)}</td>" in html for c in classes)
    assert f"{result['top1']:.2%}" in html and f"{result['top5']:.2%}" in html
    # the worst pairs: up to 5 rows, each with up to 8 images of class A predicted as B
    pairs = html.split('<table class="worst-pairs">', 1)[1].split("</table>", 1)[0]
    rows = pairs.split("<tr>")[2:]
    expected = worst_pairs(np.array(result["confusion"]))
    assert 1 <= len(rows) == len(expected) <= 5
    for (a, b, count), row in zip(expected, rows):
        thumbs = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]*)"', row)
        assert len(thumbs) == min(count, 8)
        assert all(t.startswith(f"{classes[a]} predicted as {classes[b]}") for t in thumbs)
    assert "<td>model.d_model</td><td>32</td>" in html and "&quot;d_model&quot;: 32" in html  # the config


def test_worst_pairs_are_the_largest_off_diagonal_cells():
    confusion = np.array([[50, 3, 9], [0, 40, 0], [7, 1, 30]])
    assert worst_pairs(confusion, 3) == [(0, 2, 9), (2, 0, 7), (0, 1, 3)]
    assert worst_pairs(np.diag([5, 5])) == []
