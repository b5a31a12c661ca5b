"""Rebuild the bundled sample corpus from the project's shared data (a maintainer's script).

    python -m mlscale.data.build_sample ../shared/data

Copies whole gzip members (one WARC record each) out of the source WARC files, so every
bundled record is byte-for-byte the record that was crawled; see README.md for sources.
"""
from __future__ import annotations

import sys
from pathlib import Path

import zstandard
from fastwarc.warc import ArchiveIterator, WarcRecordType

HERE = Path(__file__).resolve().parent
# Debian Reference chapters kept in all four languages (the smaller ones), plus the index
DEBIAN_CHAPTERS = ("apa", "pr01", "ch08")
# Python documentation pages up to this size (raw HTML bytes) are bundled
PYTHON_MAX_BYTES = 34_000


def _members(path: Path) -> list[tuple[int, int, str, int, int]]:
    """(start, end, url, record type, payload bytes) of every gzip member of a WARC file."""
    data = path.read_bytes()
    rows: list[list] = []
    with open(path, "rb") as fh:
        for rec in ArchiveIterator(fh, parse_http=False):
            url = (rec.headers.get("WARC-Target-URI") or "").strip("<>")
            rows.append([rec.stream_pos, 0, url, int(rec.record_type), len(rec.reader.read())])
    for i, row in enumerate(rows):
        row[1] = rows[i + 1][0] if i + 1 < len(rows) else len(data)
    return [tuple(r) for r in rows]  # type: ignore[misc]


def _subset(src: Path, dst: Path, keep) -> int:
    data = src.read_bytes()
    parts = [data[a:b] for a, b, url, rtype, size in _members(src) if keep(url, rtype, size)]
    dst.write_bytes(b"".join(parts))
    return len(parts)


def build(shared: Path) -> None:
    """Write the sample files into this package's data folder."""
    response = int(WarcRecordType.response)
    for name in ("sample-0000.warc.gz", "sample-0001.warc.gz"):
        (HERE / f"commoncrawl-{name}").write_bytes((shared / "commoncrawl" / name).read_bytes())
    jsonl = (shared / "commoncrawl" / "cc_en_head-0091.jsonl").read_bytes()
    (HERE / "ccnet-cc_en_head-0091.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor(level=19).compress(jsonl))

    def debian(url: str, rtype: int, size: int) -> bool:
        page = url.rsplit("/", 1)[-1]
        return rtype == response and (page == "index.html" or page.split(".")[0] in DEBIAN_CHAPTERS)

    def python(url: str, rtype: int, size: int) -> bool:
        return rtype == response and size <= PYTHON_MAX_BYTES and "genindex" not in url

    n1 = _subset(shared / "web" / "debian-reference.warc.gz", HERE / "debian-reference-sample.warc.gz", debian)
    n2 = _subset(shared / "web" / "python-3.11-docs.warc.gz", HERE / "python-3.11-docs-sample.warc.gz", python)
    print(f"debian reference: {n1} pages; python docs: {n2} pages")


if __name__ == "__main__":  # pragma: no cover - maintainer's tool
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
