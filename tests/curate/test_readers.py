"""Readers: formats, stable ids, charsets, bad records and bounded memory."""
from __future__ import annotations

import bz2
import gzip
import json
import tracemalloc
import zlib
from pathlib import Path

import pytest

from mlscale.curate.document import Document, Removal
from mlscale.curate.readers import ReadConfig, decode_document, discover_inputs, read_file
from mlscale.errors import InputError


def items(path: Path, cfg: ReadConfig | None = None, on_error: str = "fail", source=None):
    return list(read_file(path, cfg or ReadConfig(), on_error=on_error, source=source))


def warc_record(body: bytes, uri: str = "http://example.com/", rec_type: str = "response",
                http: str | None = "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8",
                record_id: str | None = "<urn:uuid:00000000-0000-0000-0000-000000000001>",
                content_type: str | None = None) -> bytes:
    """One uncompressed WARC/1.0 record (an HTTP response unless `http` is None)."""
    block = (http.encode() + b"\r\n\r\n" + body) if http is not None else body
    ctype = content_type or ("application/http; msgtype=response" if http is not None else "text/plain")
    headers = [f"WARC-Type: {rec_type}", f"WARC-Target-URI: {uri}",
               "WARC-Date: 2024-01-01T00:00:00Z", f"Content-Type: {ctype}",
               f"Content-Length: {len(block)}"]
    if record_id:
        headers.insert(1, f"WARC-Record-ID: {record_id}")
    return ("WARC/1.0\r\n" + "\r\n".join(headers) + "\r\n\r\n").encode() + block + b"\r\n\r\n"


# ------------------------------------------------------------------------------ discovery
def test_discover_expands_directories_sorted_and_skips_hidden(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.jsonl").write_text("{}\n")
    (tmp_path / "a.warc.gz").write_bytes(b"")
    (tmp_path / "notes.md").write_text("not an input")
    (tmp_path / ".done").mkdir()
    (tmp_path / ".done" / "x.jsonl").write_text("{}\n")
    (tmp_path / "page.HTML").write_text("<p>hi</p>")
    found = discover_inputs([tmp_path])
    assert found == sorted([tmp_path / "a.warc.gz", tmp_path / "b" / "z.jsonl", tmp_path / "page.HTML"])
    assert discover_inputs([tmp_path / "b" / "z.jsonl", tmp_path / "b"]) == [tmp_path / "b" / "z.jsonl"]


def test_discover_real_data_folder(commoncrawl):
    found = discover_inputs([commoncrawl])
    assert [p.name for p in found] == ["cc_en_head-0091.jsonl", "sample-0000.warc.gz", "sample-0001.warc.gz"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.jsonl", "input not found"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no supported input files"),
    (lambda p: (p / "x.csv").write_text("a,b") and p / "x.csv", "unsupported input file"),
])
def test_discover_errors_are_one_clear_message(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        discover_inputs([make(tmp_path)])
    with pytest.raises(InputError, match="no input"):
        discover_inputs([])


# ---------------------------------------------------------------------------------- JSONL
def test_real_ccnet_jsonl_ids_urls_and_metadata(commoncrawl):
    docs = items(commoncrawl / "cc_en_head-0091.jsonl")
    assert len(docs) == 10 and all(isinstance(d, Document) for d in docs)
    first = docs[0]
    assert first.id == "http://100kinvesting.com/2016/11/28/first-teleconference-calls-invoice-factoring/"
    assert first.source == "cc_en_head-0091.jsonl"
    assert first.text.startswith("First Teleconference") or len(first.text) > 100
    assert first.metadata["language"] == "en" and first.metadata["perplexity"] == 304.6
    assert first.html is None


def test_jsonl_fallback_ids_are_source_and_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b", "id": 7}\n{"text": "c", "url": "http://x"}\n')
    docs = items(path, source="shard/d.jsonl")
    assert [d.id for d in docs] == ["shard/d.jsonl#1", "7", "shard/d.jsonl#4"]
    assert [d.text for d in docs] == ["a", "b", "c"]
    assert docs[2].url == "http://x" and docs[0].source == "shard/d.jsonl"


def test_jsonl_malformed_fails_naming_file_and_line_or_is_skipped(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n[1, 2]\n{"body": "no text"}\n{"text": "last"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: malformed record"):
        items(path)
    out = items(path, on_error="skip")
    assert [type(o).__name__ for o in out] == ["Document", "Removal", "Removal", "Removal", "Document"]
    assert [o.reason for o in out if isinstance(o, Removal)] == ["malformed"] * 3
    assert out[1].id == "bad.jsonl#2" and out[1].step == "read" and "bad.jsonl:2" in out[1].detail
    assert "expected a JSON object" in out[2].detail and "no string field 'text'" in out[3].detail


def test_jsonl_deeply_nested_json_is_malformed_not_a_crash(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n" + '{"text": "fine"}\n')
    out = items(path, on_error="skip")
    assert out[0].reason == "malformed" and out[1].text == "fine"


def test_jsonl_undecodable_bytes_and_lone_surrogates_are_replaced_and_counted(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"text": "caf\xe9 \xff ok"}\n{"text": "a\\ud800b"}\n{"text": "clean \\u00e9"}\n')
    a, b, c = items(path)
    assert a.text == "caf\ufffd \ufffd ok" and a.metadata["replaced_chars"] == 2
    assert b.text == "a\ufffdb" and b.metadata["replaced_chars"] == 1
    b.text.encode("utf-8")  # writable as UTF-8 (Parquet) after the scrub
    assert c.text == "clean \u00e9" and "replaced_chars" not in c.metadata


@pytest.mark.parametrize("suffix, opener", [
    (".jsonl.gz", gzip.compress), (".jsonl.bz2", bz2.compress), (".json.gz", gzip.compress),
    (".jsonl.zst", None),
])
def test_compressed_jsonl_reads_the_same_records(tmp_path, suffix, opener, commoncrawl):
    raw = (commoncrawl / "cc_en_head-0091.jsonl").read_bytes()
    if opener is None:
        import zstandard

        data = zstandard.ZstdCompressor().compress(raw[:50_000]) + zstandard.ZstdCompressor().compress(raw[50_000:])
    else:
        data = opener(raw)
    path = tmp_path / ("cc" + suffix)
    path.write_bytes(data)
    plain = items(commoncrawl / "cc_en_head-0091.jsonl")
    got = items(path)
    assert [(d.id, d.text) for d in got] == [(d.id, d.text) for d in plain]


def test_truncated_gzip_keeps_earlier_records_and_names_the_file(tmp_path):
    records = "".join(json.dumps({"text": f"doc {i} " * 50}) + "\n" for i in range(200))
    data = gzip.compress(records.encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.jsonl.gz.*corrupt or truncated"):
        items(path)
    out = items(path, on_error="skip")
    docs = [o for o in out if isinstance(o, Document)]
    assert len(docs) > 10 and docs[0].text.startswith("doc 0")
    assert isinstance(out[-1], Removal) and out[-1].reason == "corrupt"


def test_oversize_line_is_too_large_and_reading_goes_on(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": "x" * 5000}) + "\n" + json.dumps({"text": "small"}) + "\n"
                    + json.dumps({"text": "y" * 988}) + "\n")
    cfg = ReadConfig(max_record_bytes=1000)
    out = items(path, cfg)
    assert isinstance(out[0], Removal) and out[0].reason == "too_large" and out[0].id == "big.jsonl#1"
    assert out[1].text == "small" and out[2].text == "y" * 988  # exactly 1000 bytes + newline fits


def test_gzip_bomb_with_one_endless_line_stays_in_bounded_memory(tmp_path):
    # 24 MB of one line, ~24 kB compressed
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b'{"text": "' + b"a" * (1 << 20)
    body = comp.compress(chunk) + b"".join(comp.compress(b"a" * (1 << 20)) for _ in range(23))
    body += comp.compress(b'"}\n{"text": "after the bomb"}\n') + comp.flush()
    path = tmp_path / "bomb.jsonl.gz"
    path.write_bytes(body)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    out = items(path, ReadConfig(max_record_bytes=100_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out[0].reason == "too_large" and out[0].detail.startswith(f"{24 * (1 << 20) + 12} bytes")
    assert out[1].text == "after the bomb"
    assert peak < 8 << 20  # never the whole 24 MB line


def test_html_field_sets_html(tmp_path):
    path = tmp_path / "pages.jsonl"
    path.write_text(json.dumps({"id": "p1", "html": "<p>Hello</p>"}) + "\n")
    (doc,) = items(path, ReadConfig(html_field="html"))
    assert doc.html == "<p>Hello</p>" and doc.text == ""


# -------------------------------------------------------------------------------- Parquet
def test_parquet_rows_ids_metadata_and_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": ["one", None, "three", "z" * 50],
                      "id": ["a", "b", None, "d"],
                      "metadata": ['{"k": 1}', None, None, None],
                      "lang": ["en", "de", "fr", "en"]})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    with pytest.raises(InputError, match="row 1 has no string 'text'"):
        items(path)
    out = items(path, ReadConfig(keep_fields=["lang"], max_record_bytes=20), on_error="skip")
    assert [(type(o).__name__, o.id) for o in out] == [
        ("Document", "a"), ("Removal", "b"), ("Document", "t.parquet#2"), ("Removal", "d")]
    assert out[0].metadata == {"k": 1, "lang": "en"} and out[2].text == "three"
    assert out[1].reason == "malformed" and out[3].reason == "too_large"


def test_parquet_without_the_text_column_names_the_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"no column 'text' \(columns: body\)"):
        items(tmp_path / "t.parquet")


def test_corrupt_parquet_is_an_input_error(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="junk.parquet"):
        items(path)
    (rem,) = items(path, on_error="skip")
    assert rem.reason == "corrupt"


# ----------------------------------------------------------------------------------- WARC
def test_real_commoncrawl_warc_responses(commoncrawl):
    out = items(commoncrawl / "sample-0000.warc.gz")
    assert len(out) == 22 and all(isinstance(d, Document) for d in out)  # 22 HTTP responses
    first = out[0]
    assert first.id == "urn:uuid:283E41D7-F686-4C3E-B7DA-E8D248A100C1"
    assert first.url == "https://www.semanticscholar.org/research/research-team"
    assert first.text == "" and first.html.lstrip().lower().startswith("<!doctype html")
    assert first.metadata == {"warc_date": "2024-04-25T16:24:44Z"}
    assert len({d.id for d in out}) == 22


def test_chunked_transfer_encoding_is_undone(commoncrawl):
    out = items(commoncrawl / "sample-0000.warc.gz")
    chunked = next(d for d in out if d.id == "urn:uuid:F3C7FC77-0FF7-4C1C-B521-544F3C266C64")
    assert chunked.html.startswith("<!DOCTYPE html")
    assert "\r\n0\r\n" not in chunked.html[-20:]


def test_warc_statuses_types_sizes_and_encodings(tmp_path):
    page = "<html><body><p>Caf\u00e9 cr\u00e8me</p></body></html>"
    gz = gzip.compress(page.encode("utf-8"))
    recs = [
        warc_record(page.encode("cp1252"), http="HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=ISO-8859-1"),
        warc_record(b"nope", http="HTTP/1.1 404 Not Found\r\nContent-Type: text/html"),
        warc_record(b"\x89PNG....", http="HTTP/1.1 200 OK\r\nContent-Type: image/png"),
        warc_record(b"<p>" + b"x" * 3000 + b"</p>"),
        warc_record(gz, http="HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip"),
        warc_record(b"plain words", rec_type="conversion", http=None, record_id=None,
                    uri="<http://example.com/wet>"),
    ]
    path = tmp_path / "x.warc"
    path.write_bytes(b"".join(recs))
    out = items(path, ReadConfig(max_record_bytes=2000))
    kinds = [(type(o).__name__, getattr(o, "reason", None)) for o in out]
    assert kinds == [("Document", None), ("Removal", "http_status"), ("Removal", "unsupported_type"),
                     ("Removal", "too_large"), ("Document", None), ("Document", None)]
    assert "Caf\u00e9 cr\u00e8me" in out[0].html
    assert out[4].html == page
    wet = out[5]
    assert wet.text == "plain words" and wet.html is None and wet.url == "http://example.com/wet"
    assert wet.id.startswith("x.warc#")
    every = items(path, ReadConfig(max_record_bytes=2000, http_ok_only=False))
    assert isinstance(every[1], Document)


def test_warc_garbage_after_records_fails_or_keeps_the_records(tmp_path):
    path = tmp_path / "g.warc"
    path.write_bytes(warc_record(b"<p>first</p>") + b"this is not a WARC record\r\n\r\n")
    with pytest.raises(InputError, match=r"g\.warc.*corrupt"):
        items(path)
    out = items(path, on_error="skip")
    assert isinstance(out[0], Document) and "first" in out[0].html
    assert out[-1].reason == "corrupt"


# --------------------------------------------------------------------------- single files
def test_text_and_html_files(tmp_path):
    (tmp_path / "a.txt").write_bytes("na\u00efve caf\u00e9 d\u00e9j\u00e0 vu, \u00e0 la carte".encode("cp1252") * 20)
    (tmp_path / "b.html").write_bytes(b'<html><head><meta charset="windows-1252"></head>'
                                      b"<body><p>\x93quoted\x94</p></body></html>")
    (txt,) = items(tmp_path / "a.txt")
    assert txt.id == "a.txt#0" and "na\u00efve caf\u00e9" in txt.text and txt.html is None
    (page,) = items(tmp_path / "b.html")
    assert page.text == "" and "\u201cquoted\u201d" in page.html
    (tmp_path / "big.txt").write_text("x" * 200)
    (rem,) = items(tmp_path / "big.txt", ReadConfig(max_record_bytes=100))
    assert rem.reason == "too_large" and rem.id == "big.txt#0"


def test_decode_document_prefers_declared_then_meta_then_detection():
    assert decode_document("\u00e9t\u00e9".encode("utf-8"), "utf-8") == ("\u00e9t\u00e9", 0)
    # a wrong declaration that cannot decode falls back to detection
    text, replaced = decode_document("\u00e9t\u00e9 ".encode("cp1252") * 50, "utf-8")
    assert text.startswith("\u00e9t\u00e9") and replaced == 0
    assert decode_document(b"\xef\xbb\xbfhi", None) == ("hi", 0)
    assert decode_document(b"plain", "no-such-charset") == ("plain", 0)
