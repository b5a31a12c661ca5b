"""Readers: raw input files to a stream of `Document`s (or `Removal`s for bad records).

Supported inputs (chosen by file name):

    .jsonl .ndjson .json.gz/.zst/.bz2 and .jsonl/.ndjson with .gz/.zst/.bz2   one JSON object a line
    .parquet                                                                  one row a document
    .warc .warc.gz                   WARC response and conversion (WET) records (fastwarc)
    .txt                             one document a file
    .html .htm                       one HTML document a file (text comes from `extract`)

Ids are stable across runs: the record's own id (JSONL/Parquet `id_field`, WARC-Record-ID)
if it has one, else `<source>#<position>` with position the 1-based line number of a JSONL
line, the 0-based row of a Parquet file, the byte offset of a WARC record, 0 for a file.

Reason codes of the `read` step:
    malformed       a JSONL line that is not a JSON object with a string text field
                    (only with on_error="skip"; "fail" raises InputError naming file:line)
    too_large       a record over `max_record_bytes` (never loaded into memory whole)
    corrupt         the rest of a file that cannot be decoded (truncated gzip, broken WARC
                    framing, unreadable Parquet); records before it are kept
    http_status     a WARC response whose HTTP status is not 2xx (`http_ok_only`)
    unsupported_type  a WARC record that is neither HTML nor plain text (images, PDF...)

Untrusted input stays harmless: files are streamed, lines are read with a bounded size
(the rest of an oversize line is skipped in chunks), compressed streams are decompressed
incrementally, and undecodable bytes are replaced and counted in
`metadata["replaced_chars"]`.
"""
from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import re
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from mlscale.config import option
from mlscale.curate.document import Document, Removal
from mlscale.errors import ConfigError, InputError

STEP = "read"
_CHUNK = 1 << 20

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".jsonl.zst", ".jsonl.bz2", ".ndjson.gz",
                  ".ndjson.zst", ".ndjson.bz2", ".json.gz", ".json.zst", ".json.bz2")
PARQUET_SUFFIXES = (".parquet",)
WARC_SUFFIXES = (".warc", ".warc.gz")
TEXT_SUFFIXES = (".txt",)
HTML_SUFFIXES = (".html", ".htm")
SUPPORTED_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES + WARC_SUFFIXES + TEXT_SUFFIXES + HTML_SUFFIXES

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "application/xml", "text/xml"})
TEXT_TYPES = frozenset({"text/plain"})


@dataclass
class ReadConfig:
    """How records are read from input files."""

    text_field: str = option("text", "JSONL/Parquet field that holds the document text")
    id_field: str = option("id", "JSONL/Parquet field with the document id (else source#position)")
    url_field: str = option("url", "JSONL/Parquet field with the document URL (optional)")
    html_field: str = option("", "JSONL/Parquet field with raw HTML to extract (empty: none)")
    metadata_field: str = option("metadata", "a JSON object in this field is merged into metadata")
    keep_fields: list[str] = option([], "other JSONL/Parquet fields copied into metadata")
    max_record_bytes: int = option(10_000_000, "a larger record is removed as too_large", min=1)
    http_ok_only: bool = option(True, "WARC: remove responses whose HTTP status is not 2xx")

    def validate(self) -> None:
        if not self.text_field and not self.html_field:
            raise ConfigError("read.text_field: give a text field (or read.html_field)")


# ------------------------------------------------------------------------------- files
def input_format(path: Path) -> str | None:
    """'jsonl', 'parquet', 'warc', 'text' or 'html' for a supported file name, else None."""
    name = path.name.lower()
    for fmt, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES),
                          ("warc", WARC_SUFFIXES), ("text", TEXT_SUFFIXES),
                          ("html", HTML_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt
    return None


def discover_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """The supported files named by `paths`, directories expanded recursively, sorted.

    Hidden files and folders (bookkeeping such as `.done/`) are skipped inside
    directories. A missing path, an unsupported file, or nothing readable at all raises
    InputError.
    """
    if not paths:
        raise InputError("no input given: name one or more files or directories")
    found: set[Path] = set()
    supported = ", ".join(SUPPORTED_SUFFIXES)
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"input not found: {p}")
        if p.is_dir():
            inside = [f for f in p.rglob("*")
                      if f.is_file() and input_format(f) is not None
                      and not any(part.startswith(".") for part in f.relative_to(p).parts)]
            if not inside:
                raise InputError(f"no supported input files in directory {p} (looked for {supported})")
            found.update(inside)
        elif input_format(p) is None:
            raise InputError(f"unsupported input file {p}: supported are {supported}")
        else:
            found.add(p)
    return sorted(found)


# ---------------------------------------------------------------------------- decoding
_counter = threading.local()


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    assert isinstance(err, UnicodeDecodeError)
    _counter.n = getattr(_counter, "n", 0) + 1
    return "\ufffd", err.end


codecs.register_error("mlscale.count_replace", _count_and_replace)


def decode_counting(data: bytes, encoding: str = "utf-8") -> tuple[str, int]:
    """Decode `data`, replacing undecodable bytes with U+FFFD; returns (text, replacements)."""
    try:
        return data.decode(encoding), 0
    except UnicodeDecodeError:
        _counter.n = 0
        text = data.decode(encoding, "mlscale.count_replace")
        return text, _counter.n


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _scrub_surrogates(obj: Any) -> tuple[Any, int]:
    """Replace lone surrogates (from JSON escapes) that UTF-8 cannot encode; count them."""
    if isinstance(obj, str):
        return _SURROGATE.subn("\ufffd", obj)
    if isinstance(obj, list):
        total = 0
        out = []
        for v in obj:
            v, n = _scrub_surrogates(v)
            out.append(v)
            total += n
        return out, total
    if isinstance(obj, dict):
        total = 0
        res = {}
        for k, v in obj.items():
            k, n1 = _scrub_surrogates(k)
            v, n2 = _scrub_surrogates(v)
            res[k] = v
            total += n1 + n2
        return res, total
    return obj, 0


def _python_codec(label: str | None) -> str | None:
    """The Python codec for a charset label, mapped the way browsers do (WHATWG)."""
    if not label:
        return None
    from resiliparse.parse.encoding import map_encoding_to_html5

    name = map_encoding_to_html5(label.strip().strip("\"'"), fallback_utf8=False)
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_document(data: bytes, declared: str | None = None, html: bool = False) -> tuple[str, int]:
    """Decode a web page or text file: BOM, declared charset, HTML meta tag, then detection.

    The first candidate that decodes without error wins; if none does, the best guess
    decodes with replacement and the replacements are counted.
    """
    from resiliparse.parse.encoding import detect_encoding

    for bom, enc in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                     (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            return decode_counting(data[len(bom):], enc)
    candidates: list[str] = []
    first = _python_codec(declared)
    if first:
        candidates.append(first)
        try:
            return data.decode(first), 0
        except UnicodeDecodeError:
            pass
    detected = _python_codec(detect_encoding(data, from_html_meta=html)) or "utf-8"
    for enc in (detected, "utf-8"):
        if enc in candidates:
            continue
        candidates.append(enc)
        try:
            return data.decode(enc), 0
        except UnicodeDecodeError:
            pass
    return decode_counting(data, candidates[0])


# ------------------------------------------------------------------------------- dispatch
def read_file(path: Path, cfg: ReadConfig, on_error: str = "fail",
              source: str | None = None) -> Iterator[Document | Removal]:
    """Stream the documents of one input file (see the module docstring for formats).

    `on_error="fail"` raises InputError on a malformed record or a corrupt file;
    `on_error="skip"` yields a `Removal` for it instead and goes on where it can.
    """
    if on_error not in ("fail", "skip"):
        raise ConfigError(f"on_error: {on_error!r} is not one of fail, skip")
    path = Path(path)
    fmt = input_format(path)
    if fmt is None:
        raise InputError(f"unsupported input file {path}: supported are {', '.join(SUPPORTED_SUFFIXES)}")
    src = source if source is not None else path.name
    reader = {"jsonl": _read_jsonl, "parquet": _read_parquet, "warc": _read_warc,
              "text": _read_single, "html": _read_single}[fmt]
    try:
        yield from reader(path, cfg, on_error, src)
    except FileNotFoundError:
        raise InputError(f"input not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory; pass it to discover_inputs first") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None


def _corrupt(path: Path, src: str, where: str, pos: int, err: BaseException,
             on_error: str) -> Removal:
    msg = f"{path}: {where}: {type(err).__name__}: {err}".rstrip(": ")
    if on_error == "fail":
        raise InputError(f"{msg}; the file is corrupt or truncated (records before it were read); "
                         "rerun with --on-error skip to keep going")
    return Removal(f"{src}#{pos}", STEP, "corrupt", detail=msg[:500])


def _too_large(doc_id: str, size: int, cfg: ReadConfig) -> Removal:
    return Removal(doc_id, STEP, "too_large",
                   detail=f"{size} bytes > read.max_record_bytes={cfg.max_record_bytes}")


# --------------------------------------------------------------------------------- JSONL
def _open_binary(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,
                                                            closefd=True)
        return io.BufferedReader(reader, buffer_size=_CHUNK)  # type: ignore[arg-type]
    return open(path, "rb")


def _decompress_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error, ValueError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _record_fields(obj: dict[str, Any], cfg: ReadConfig) -> tuple[str | None, str | None, str, dict]:
    """(text, html, url, metadata) of a JSON record or Parquet row."""
    text = obj.get(cfg.text_field) if cfg.text_field else None
    html = obj.get(cfg.html_field) if cfg.html_field else None
    url = obj.get(cfg.url_field) if cfg.url_field else None
    meta: dict[str, Any] = {}
    extra = obj.get(cfg.metadata_field) if cfg.metadata_field else None
    if isinstance(extra, str) and extra.startswith("{"):
        try:  # mlscale's own output stores metadata as JSON text
            extra = json.loads(extra)
        except (ValueError, RecursionError):
            extra = None
    if isinstance(extra, dict):
        meta.update(extra)
    for key in cfg.keep_fields:
        if key in obj:
            meta[key] = obj[key]
    return (text if isinstance(text, str) else None, html if isinstance(html, str) else None,
            url if isinstance(url, str) else "", meta)


def _record_id(obj: dict[str, Any], cfg: ReadConfig, fallback: str) -> str:
    rid = obj.get(cfg.id_field) if cfg.id_field else None
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        return fallback
    return str(rid)


def _read_jsonl(path: Path, cfg: ReadConfig, on_error: str, src: str) -> Iterator[Document | Removal]:
    limit = cfg.max_record_bytes
    errors = _decompress_errors()
    lineno = 0
    with _open_binary(path) as fh:
        while True:
            try:
                line = fh.readline(limit + 1)
            except errors as e:
                yield _corrupt(path, src, f"after line {lineno}", lineno + 1, e, on_error)
                return
            if not line:
                return
            lineno += 1
            doc_id = f"{src}#{lineno}"
            if len(line) > limit and not line.endswith(b"\n"):
                size = len(line)
                try:
                    while not line.endswith(b"\n"):  # skip the rest without holding it
                        line = fh.readline(_CHUNK)
                        if not line:
                            break
                        size += len(line)
                except errors as e:
                    yield _too_large(doc_id, size, cfg)
                    yield _corrupt(path, src, f"line {lineno}", lineno + 1, e, on_error)
                    return
                yield _too_large(doc_id, size - (1 if line.endswith(b"\n") else 0), cfg)
                continue
            if not line.strip():
                continue  # blank lines are not records
            item = _parse_json_line(line, cfg, path, lineno, doc_id, src, on_error)
            if item is not None:
                yield item


def _parse_json_line(line: bytes, cfg: ReadConfig, path: Path, lineno: int, doc_id: str,
                     src: str, on_error: str) -> Document | Removal | None:
    s, replaced = decode_counting(line)
    problem = ""
    obj: Any = None
    try:
        obj = json.loads(s)
    except (ValueError, RecursionError) as e:
        problem = f"invalid JSON ({e})" if isinstance(e, ValueError) else "JSON nested too deeply"
    if not problem and not isinstance(obj, dict):
        problem = f"expected a JSON object, got {type(obj).__name__}"
    if not problem:
        if _ESCAPED_SURROGATE.search(s):
            obj, n = _scrub_surrogates(obj)
            replaced += n
        text, html, url, meta = _record_fields(obj, cfg)
        if text is None and html is None:
            want = f"'{cfg.text_field}'" + (f" or '{cfg.html_field}'" if cfg.html_field else "")
            problem = f"no string field {want} (set read.text_field)"
    if problem:
        if on_error == "fail":
            raise InputError(f"{path}:{lineno}: malformed record: {problem}; fix the line or "
                             "rerun with --on-error skip")
        return Removal(doc_id, STEP, "malformed", detail=f"{path.name}:{lineno}: {problem}"[:500])
    if replaced:
        meta["replaced_chars"] = replaced
    return Document(id=_record_id(obj, cfg, doc_id), text=text or "", source=src, url=url,
                    html=html, metadata=meta)


# ------------------------------------------------------------------------------- Parquet
def _read_parquet(path: Path, cfg: ReadConfig, on_error: str, src: str) -> Iterator[Document | Removal]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        yield _corrupt(path, src, "cannot open as Parquet", 0, e, on_error)
        return
    names = set(pf.schema_arrow.names)
    if cfg.text_field not in names and cfg.html_field not in names:
        raise InputError(f"{path} has no column '{cfg.text_field}' (columns: "
                         f"{', '.join(sorted(names))}); set read.text_field")
    wanted = [cfg.text_field, cfg.html_field, cfg.id_field, cfg.url_field, cfg.metadata_field,
              *cfg.keep_fields]
    columns = list(dict.fromkeys(c for c in wanted if c and c in names))
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            sizes = [0] * batch.num_rows
            for col in (cfg.text_field, cfg.html_field):
                if col in batch.schema.names and pa.types.is_string(batch.schema.field(col).type):
                    lengths = pc.fill_null(pc.binary_length(batch.column(col)), 0).to_pylist()
                    sizes = [a + b for a, b in zip(sizes, lengths)]
            rows = batch.to_pylist()
            for i, obj in enumerate(rows):
                doc_id = f"{src}#{row}"
                row += 1
                if sizes[i] > cfg.max_record_bytes:
                    yield _too_large(_record_id(obj, cfg, doc_id), sizes[i], cfg)
                    continue
                text, html, url, meta = _record_fields(obj, cfg)
                rid = _record_id(obj, cfg, doc_id)
                if text is None and html is None:
                    if on_error == "fail":
                        raise InputError(f"{path}: row {row - 1} has no string '{cfg.text_field}'; "
                                         "fix the file or rerun with --on-error skip")
                    yield Removal(rid, STEP, "malformed",
                                  detail=f"{path.name}: row {row - 1}: no string '{cfg.text_field}'")
                    continue
                yield Document(id=rid, text=text or "", source=src, url=url,
                               html=html, metadata=meta)
    except (pa.ArrowException, OSError) as e:
        yield _corrupt(path, src, f"row {row}", row, e, on_error)


# ---------------------------------------------------------------------------------- WARC
def _dechunk(body: bytes) -> bytes:
    """Undo HTTP chunked transfer encoding; the body unchanged if it is not well-formed."""
    out = []
    pos = 0
    n = len(body)
    while pos < n:
        eol = body.find(b"\r\n", pos, pos + 64)
        if eol < 0:
            return body
        size_field = body[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            return body
        if size == 0:
            return b"".join(out)
        start = eol + 2
        if start + size > n:
            out.append(body[start:])
            return b"".join(out)
        out.append(body[start:start + size])
        pos = start + size + 2
    return b"".join(out)


def _decompress_bounded(body: bytes, encoding: str, limit: int) -> bytes | None:
    """gzip/deflate content encoding, at most `limit`+1 bytes out (a bomb stays small)."""
    wbits = {"gzip": 47, "x-gzip": 47, "deflate": 15}.get(encoding)
    if wbits is None:
        return None
    for bits in ((wbits, -15) if encoding == "deflate" else (wbits,)):
        try:
            d = zlib.decompressobj(bits)
            return d.decompress(body, limit + 1)
        except zlib.error:
            continue
    return None


def _strip_angle(value: str | None) -> str:
    value = (value or "").strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


def _read_warc(path: Path, cfg: ReadConfig, on_error: str, src: str) -> Iterator[Document | Removal]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    limit = cfg.max_record_bytes
    # responses are captured pages, conversions (WET) their text; other records (requests,
    # metadata, a crawler's own log kept as a resource) are not documents
    types = WarcRecordType.response | WarcRecordType.conversion
    last_pos = 0
    with open(path, "rb") as fh:
        records = iter(ArchiveIterator(fh, record_types=types, parse_http=True))
        while True:
            try:
                rec = next(records)
            except StopIteration:
                return
            except (OSError, ValueError, RuntimeError) as e:
                yield _corrupt(path, src, f"after byte {last_pos}", last_pos + 1, e, on_error)
                return
            last_pos = rec.stream_pos
            try:
                item = _warc_record(rec, cfg, src, limit)
            except (OSError, ValueError, RuntimeError) as e:
                yield _corrupt(path, src, f"record at byte {rec.stream_pos}", rec.stream_pos, e, on_error)
                return
            yield item


def _warc_record(rec: Any, cfg: ReadConfig, src: str, limit: int) -> Document | Removal:
    from fastwarc.warc import WarcRecordType

    headers = rec.headers
    doc_id = _strip_angle(headers.get("WARC-Record-ID")) or f"{src}#{rec.stream_pos}"
    if rec.content_length > limit:
        return _too_large(doc_id, rec.content_length, cfg)
    url = _strip_angle(headers.get("WARC-Target-URI"))
    charset = None
    content_encoding = ""
    chunked = False
    if rec.is_http and rec.http_headers is not None:
        http = rec.http_headers
        status = http.status_code
        if cfg.http_ok_only and rec.record_type == WarcRecordType.response and not (200 <= (status or 0) < 300):
            return Removal(doc_id, STEP, "http_status", detail=f"HTTP {status}")
        ctype = (rec.http_content_type or "").lower()
        charset = rec.http_charset
        content_encoding = (http.get("Content-Encoding") or "").strip().lower()
        chunked = "chunked" in (http.get("Transfer-Encoding") or "").lower()
    else:
        raw_type = headers.get("Content-Type") or ""
        ctype = raw_type.split(";", 1)[0].strip().lower()
        m = re.search(r"charset=([^;\s]+)", raw_type, re.I)
        charset = m.group(1) if m else None
    body = rec.reader.read(limit + 1)
    if chunked:
        body = _dechunk(body)
    if content_encoding and content_encoding != "identity":
        inflated = _decompress_bounded(body, content_encoding, limit)
        if inflated is None:
            return Removal(doc_id, STEP, "unsupported_type",
                           detail=f"Content-Encoding {content_encoding}")
        body = inflated
    if len(body) > limit:
        return _too_large(doc_id, len(body), cfg)
    if ctype in HTML_TYPES or ctype in TEXT_TYPES:
        is_html = ctype in HTML_TYPES
    elif not ctype:  # no type given: WET conversions are text, captures are pages
        is_html = rec.record_type != WarcRecordType.conversion
    else:
        return Removal(doc_id, STEP, "unsupported_type", detail=ctype[:100])
    text, replaced = decode_document(body, charset, html=is_html)
    meta: dict[str, Any] = {}
    date = headers.get("WARC-Date")
    if date:
        meta["warc_date"] = date
    if replaced:
        meta["replaced_chars"] = replaced
    if is_html:
        return Document(id=doc_id, text="", source=src, url=url, html=text, metadata=meta)
    return Document(id=doc_id, text=text, source=src, url=url, metadata=meta)


# --------------------------------------------------------------------- single-file inputs
def _read_single(path: Path, cfg: ReadConfig, on_error: str, src: str) -> Iterator[Document | Removal]:
    doc_id = f"{src}#0"
    size = path.stat().st_size
    if size > cfg.max_record_bytes:
        yield _too_large(doc_id, size, cfg)
        return
    with open(path, "rb") as fh:
        data = fh.read(cfg.max_record_bytes + 1)
    if len(data) > cfg.max_record_bytes:  # the file grew since stat()
        yield _too_large(doc_id, len(data), cfg)
        return
    is_html = input_format(path) == "html"
    text, replaced = decode_document(data, None, html=is_html)
    meta = {"replaced_chars": replaced} if replaced else {}
    if is_html:
        yield Document(id=doc_id, text="", source=src, html=text, metadata=meta)
    else:
        yield Document(id=doc_id, text=text, source=src, metadata=meta)
