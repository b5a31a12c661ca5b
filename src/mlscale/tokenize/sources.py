"""Input discovery and reading: curated directories, Parquet, JSONL and plain text.

Everything is read as a stream of `Piece`s, the unit the encoder sees:

* a document from a curated directory, Parquet or JSONL file (or a plain-text file among
  other inputs) is one piece, assigned to train or val by a hash of its id, and ends with eos;
* a single plain-text file as the only input is nanoGPT's case: the first
  (1 - val_fraction) of its characters are train and the rest val, with no eos. Long text
  is cut into pieces of about `PIECE_CHARS` characters, only at a newline between two
  non-space characters: there a byte-level BPE's pre-tokenizer splits anyway, so the
  tokens are exactly those of the uncut text, and the encoding can run in parallel.
"""
from __future__ import annotations

import gzip
import io
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Sequence

from mlscale.errors import InputError
from mlscale.tokenize.config import InputConfig
from mlscale.tokenize.split import TRAIN, VAL, position_split, split_of

PIECE_CHARS = 1 << 18
_READ_CHARS = 1 << 22
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson", ".ndjson.gz", ".ndjson.zst")
_TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")


@dataclass(frozen=True)
class Source:
    """One input file and how to read it."""

    path: Path
    format: str  # "parquet" | "jsonl" | "text"


@dataclass(slots=True)
class Piece:
    """A run of text that is encoded on its own."""

    split: str
    text: str
    starts_doc: bool  # first piece of a document (counts one document)
    eos: bool  # append eos after its tokens (end of a document)


def resolve_inputs(inputs: Sequence[str | Path]) -> list[Source]:
    """The files to read, in a fixed order; an InputError for anything missing or unreadable."""
    if not inputs:
        raise InputError("no input given: pass a curated directory, .parquet, .jsonl or .txt files")
    sources: list[Source] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"input not found: {path}")
        if path.is_dir():
            sources += _curated(path)
            continue
        name = path.name.lower()
        if name.endswith(".parquet"):
            sources.append(Source(path, "parquet"))
        elif name.endswith(_JSONL_SUFFIXES):
            sources.append(Source(path, "jsonl"))
        elif name.endswith(_TEXT_SUFFIXES) or "." not in name:
            sources.append(Source(path, "text"))
        else:
            raise InputError(f"{path}: unsupported input; expected a curated directory, .parquet, "
                             ".jsonl[.gz|.zst] or plain text (.txt)")
    return sources


def _curated(path: Path) -> list[Source]:
    """The kept/ Parquet shards of a finished `mlscale curate` output directory."""
    if (path / "stage.json").exists() and not (path / "manifest.json").exists():
        raise InputError(f"{path}: `mlscale curate` has not finished there (no manifest.json); "
                         "run it again to complete it")
    kept = path / "kept"
    files = sorted(p for p in kept.rglob("*.parquet")
                   if not any(s.startswith(".") for s in p.relative_to(kept).parts)) if kept.is_dir() else []
    if not files:
        raise InputError(f"{path}: a directory input must be a curated output with kept/*.parquet; "
                         "none found")
    return [Source(p, "parquet") for p in files]


def positional(sources: Sequence[Source]) -> bool:
    """True for nanoGPT's case: one plain-text file, split by position."""
    return len(sources) == 1 and sources[0].format == "text"


def iter_pieces(sources: Sequence[Source], cfg: InputConfig, val_fraction: float,
                seed: int = 0) -> Iterator[Piece]:
    """All pieces of all inputs, in input order (deterministic)."""
    if positional(sources):
        yield from _text_by_position(sources[0].path, val_fraction)
        return
    for src in sources:
        for doc_id, text in iter_documents(src, cfg):
            if text:
                yield Piece(split_of(doc_id, val_fraction, seed), text, True, True)


def iter_documents(src: Source, cfg: InputConfig) -> Iterator[tuple[str, str]]:
    """(id, text) of each document of one input file."""
    if src.format == "parquet":
        yield from _parquet(src.path, cfg)
    elif src.format == "jsonl":
        yield from _jsonl(src.path, cfg)
    else:
        with _open_text(src.path) as fh:
            yield src.path.name, fh.read()


# ------------------------------------------------------------------------------ readers
def _parquet(path: Path, cfg: InputConfig) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on a bad file
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if cfg.text_field not in names:
        raise InputError(f"{path}: no column '{cfg.text_field}' (columns: {', '.join(names)}); "
                         "set input.text_field")
    has_id = cfg.id_field in names
    columns = [cfg.text_field] + ([cfg.id_field] if has_id else [])
    row = 0
    for batch in pf.iter_batches(batch_size=4096, columns=columns):
        texts = batch.column(cfg.text_field).to_pylist()
        ids = batch.column(cfg.id_field).to_pylist() if has_id else [None] * len(texts)
        for doc_id, text in zip(ids, texts):
            if text is not None and not isinstance(text, str):
                raise InputError(f"{path}: row {row}: '{cfg.text_field}' is not text")
            # Arrow strings are valid UTF-8: nothing to clean
            yield (str(doc_id) if doc_id is not None else f"{path.name}#{row}"), text or ""
            row += 1


def _jsonl(path: Path, cfg: InputConfig) -> Iterator[tuple[str, str]]:
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.isspace() or not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or cfg.text_field not in rec:
                raise InputError(f"{path}:{lineno}: no field '{cfg.text_field}'; set input.text_field")
            text = rec[cfg.text_field]
            if text is not None and not isinstance(text, str):
                raise InputError(f"{path}:{lineno}: '{cfg.text_field}' is not a string")
            doc_id = rec.get(cfg.id_field)
            if text and ("\\ud" in line or "\\uD" in line):  # escaped surrogates: maybe a lone one
                text = _clean(text)
            yield (str(doc_id) if doc_id is not None else f"{path.name}#{lineno}"), text or ""


@contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
    """A text stream of a plain, .gz or .zst file; newlines are kept exactly as stored.

    A decoding or decompression error anywhere while it is read becomes an InputError.
    """
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            raw: IO[bytes] = gzip.open(path, "rb")
        elif name.endswith(".zst"):
            import zstandard

            raw = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
        else:
            raw = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot open ({e.strerror})") from None
    try:
        with io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh:
            yield fh
    except (UnicodeDecodeError, EOFError, OSError) as e:
        raise InputError(f"{path}: not readable as UTF-8 text ({e})") from None
    except Exception as e:
        if type(e).__name__ == "ZstdError":
            raise InputError(f"{path}: not a readable .zst file ({e})") from None
        raise


def _clean(text: str) -> str:
    """Replace lone surrogates (JSON can escape them; UTF-8 cannot hold them) with '?'."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


# ------------------------------------------------------------------- nanoGPT's single file
def count_chars(path: Path) -> int:
    """Number of characters (code points) of a text file, streamed."""
    n = 0
    with _open_text(path) as fh:
        while block := fh.read(_READ_CHARS):
            n += len(block)
    return n


def _text_by_position(path: Path, val_fraction: float) -> Iterator[Piece]:
    cut = position_split(count_chars(path), val_fraction)
    pos = 0  # characters emitted so far
    buf = ""
    eof = False
    first = {TRAIN: True, VAL: True}
    with _open_text(path) as fh:
        while True:
            if not eof and len(buf) < 2 * PIECE_CHARS:
                block = fh.read(PIECE_CHARS)
                eof = not block
                buf += block
                continue
            if not buf:
                break
            split = TRAIN if pos < cut else VAL
            end = len(buf) if eof else safe_cut(buf, PIECE_CHARS)
            if split == TRAIN and cut - pos <= len(buf) and (end == 0 or pos + end > cut):
                end = cut - pos  # the train/val boundary: the parts are encoded apart, as nanoGPT
            if end == 0:  # no safe cut in the buffer yet: read on
                block = fh.read(PIECE_CHARS)
                eof = not block
                buf += block
                continue
            text, buf = buf[:end], buf[end:]
            pos += len(text)
            yield Piece(split, text, first[split], False)
            first[split] = False


def safe_cut(text: str, target: int) -> int:
    """A cut index near `target` (searching back, then forward) where text[:i] and text[i:]
    tokenize as the whole does: just after a newline between two non-space characters.
    0 when there is none."""
    i = text.rfind("\n", 0, target)
    while i > 0:
        if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", 0, i)
    i = text.find("\n", target)
    while 0 < i < len(text) - 1:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        i = text.find("\n", i + 1)
    return 0
