"""The bundled sample corpus: a few hundred real documents that tests and demos use.

See README.md in this folder for where each file comes from and under which licence.
"""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
_SUFFIXES = (".warc.gz", ".jsonl.zst")


def bundled_corpus() -> list[Path]:
    """The sample's input files, sorted: real crawled pages, HTML documentation, CCNet text."""
    files = sorted(p for p in DATA_DIR.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES))
    if not files:  # pragma: no cover - only in a broken installation
        raise FileNotFoundError(f"the bundled sample corpus is missing from {DATA_DIR}")
    return files


def fashion_mnist_sample() -> Path:
    """The bundled Fashion-MNIST subset: a folder of IDX files (3,000 train, 1,000 test)."""
    return DATA_DIR / "fashion-mnist"
