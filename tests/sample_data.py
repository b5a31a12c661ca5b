"""Real data for the tests, all of it inside the repository: a clone needs nothing beside it.

The package's bundled sample (`mlscale.data`, see src/mlscale/data/README.md) holds tiny
Shakespeare, the two Common Crawl WARC files, the CCNet JSONL (all byte for byte the
originals) and subsets of the Python documentation and the Debian Reference. tests/data/
(see its README.md) adds the self-instruct seed tasks, Epoch AI's Chinchilla table and one
more Debian Reference chapter. The `write_*` helpers give a plain file where a test needs a
path with the original name (fixtures call them into a temporary folder).
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import zstandard

from mlscale.data import DATA_DIR

TEST_DATA = Path(__file__).resolve().parent / "data"
SHAKESPEARE_GZ = DATA_DIR / "tinyshakespeare.txt.gz"
CC_WARCS = {name: DATA_DIR / f"commoncrawl-{name}" for name in ("sample-0000.warc.gz", "sample-0001.warc.gz")}
CCNET_ZST = DATA_DIR / "ccnet-cc_en_head-0091.jsonl.zst"
CCNET_NAME = "cc_en_head-0091.jsonl"
PYTHON_DOCS = DATA_DIR / "python-3.11-docs-sample.warc.gz"
# the bundled sample (appendix A, preface, chapter 8, index) and chapter 7 from tests/data
DEBIAN_REFERENCE = (DATA_DIR / "debian-reference-sample.warc.gz", TEST_DATA / "debian-reference-ch07.warc.gz")
SEED_TASKS_GZ = TEST_DATA / "self-instruct-seed_tasks.jsonl.gz"
CHINCHILLA_GZ = TEST_DATA / "chinchilla-svg_extracted_data.csv.gz"


@lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """All 1,115,394 characters of tiny Shakespeare, exactly as in its file."""
    with gzip.open(SHAKESPEARE_GZ, "rt", encoding="utf-8", newline="") as fh:
        return fh.read()


def ccnet_bytes() -> bytes:
    """The CCNet sample's JSONL (10 documents), byte for byte."""
    with open(CCNET_ZST, "rb") as fh:
        return zstandard.ZstdDecompressor().stream_reader(fh).read()


def seed_tasks_text() -> str:
    """The 175 self-instruct seed tasks as JSONL text."""
    return gzip.decompress(SEED_TASKS_GZ.read_bytes()).decode("utf-8")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_shakespeare(path: Path) -> Path:
    """tiny Shakespeare as a plain text file at `path` (the original input.txt)."""
    return _write(path, gzip.decompress(SHAKESPEARE_GZ.read_bytes()))


def write_commoncrawl(folder: Path) -> Path:
    """The Common Crawl sample folder under its original names: cc_en_head-0091.jsonl,
    sample-0000.warc.gz and sample-0001.warc.gz."""
    _write(folder / CCNET_NAME, ccnet_bytes())
    for name, src in CC_WARCS.items():
        _write(folder / name, src.read_bytes())
    return folder


def write_seed_tasks(path: Path) -> Path:
    """The self-instruct seed tasks as a plain JSONL file at `path`."""
    return _write(path, gzip.decompress(SEED_TASKS_GZ.read_bytes()))


def write_chinchilla(path: Path) -> Path:
    """Epoch AI's Chinchilla table (svg_extracted_data.csv) as a plain CSV at `path`."""
    return _write(path, gzip.decompress(CHINCHILLA_GZ.read_bytes()))
