"""Property tests: arbitrary bytes into the JSONL, WARC and HTML paths.

Never a crash with a traceback (InputError is the only exception, and only in fail mode),
never a lost valid record.
"""
from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlscale.curate.document import Document, Removal
from mlscale.curate.extract import ExtractStep
from mlscale.curate.readers import ReadConfig, read_file
from mlscale.errors import InputError

from test_readers import warc_record  # tests/curate is on sys.path (pytest rootdir layout)

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CFG = ReadConfig(max_record_bytes=4096)


def _write(name: str, data: bytes) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mlscale-fuzz-"))
    path = folder / name
    path.write_bytes(data)
    return path


def _run(path: Path, on_error: str) -> list[Document | Removal]:
    """All items; in fail mode an InputError is the one allowed exception."""
    try:
        return list(read_file(path, CFG, on_error=on_error))
    except InputError:
        assert on_error == "fail"
        return []


garbage_line = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" "))
record = st.fixed_dictionaries({"text": st.text(max_size=80)},
                               optional={"id": st.text(min_size=1, max_size=10), "url": st.text(max_size=10)})


@SETTINGS
@given(st.lists(st.one_of(record.map(lambda r: ("valid", r)), garbage_line.map(lambda g: ("junk", g))),
                max_size=25), st.booleans())
def test_jsonl_valid_lines_among_garbage_all_come_out(lines, compress):
    body = b"".join((json.dumps(x).encode() if kind == "valid" else x) + b"\n" for kind, x in lines)
    path = _write("f.jsonl.gz" if compress else "f.jsonl", gzip.compress(body) if compress else body)
    out = list(read_file(path, CFG, on_error="skip"))
    texts = [o.text for o in out if isinstance(o, Document)]
    want = [x["text"] for kind, x in lines if kind == "valid"]
    it = iter(texts)  # every valid record, in order (a garbage line may happen to be valid too)
    assert all(any(t == w for t in it) for w in want)
    assert all(o.reason in ("malformed", "too_large") for o in out if isinstance(o, Removal))
    _run(path, "fail")


@SETTINGS
@given(st.binary(max_size=3000), st.sampled_from(["f.jsonl", "f.jsonl.gz", "f.jsonl.zst", "f.warc",
                                                   "f.warc.gz", "f.parquet", "f.txt"]))
def test_arbitrary_bytes_never_crash_any_reader(data, name):
    path = _write(name, data)
    for mode in ("skip", "fail"):
        for item in _run(path, mode):
            assert isinstance(item, (Document, Removal))


@SETTINGS
@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=3))
def test_warc_records_before_garbage_survive(junk, n_valid):
    pages = [f"<html><body><p>page number {i}</p></body></html>".encode() for i in range(n_valid)]
    data = b"".join(warc_record(p, record_id=f"<urn:uuid:{i}>") for i, p in enumerate(pages)) + junk
    path = _write("f.warc", data)
    out = _run(path, "skip")
    docs = [o for o in out if isinstance(o, Document)]
    for i in range(n_valid):
        assert docs[i].id == f"urn:uuid:{i}" and f"page number {i}" in docs[i].html
    _run(path, "fail")


@SETTINGS
@given(st.one_of(st.binary(max_size=3000),
                 st.text(max_size=500).map(lambda t: f"<html><body>{t}</body></html>".encode("utf-8"))))
def test_html_files_of_any_bytes_read_and_extract_cleanly(data):
    path = _write("page.html", data)
    out = list(ExtractStep().run(read_file(path, CFG, on_error="fail")))
    assert len(out) == 1
    item = out[0]
    if isinstance(item, Document):
        assert item.text and item.html is None
        item.text.encode("utf-8")
    else:
        assert item.reason in ("no_text", "parse_error", "too_large")
