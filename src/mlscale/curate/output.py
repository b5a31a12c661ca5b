"""The Parquet files curation writes: kept documents and removal records.

    OUT/kept/part-NNNNN.parquet     id, text, source, url, metadata (JSON text)
    OUT/removed/part-NNNNN.parquet  id, step, reason, detail, duplicate_of, cluster_id,
                                    source, url (duplicate_of / cluster_id null unless
                                    the document was a duplicate)

Files are written atomically with fixed writer settings, so the same rows give the same
bytes: the output does not depend on the executor or the number of workers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from mlscale.artifacts import atomic_path
from mlscale.curate.document import Document, Removal
from mlscale.errors import ArtifactError

KEPT_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
    pa.field("metadata", pa.string(), nullable=False),
])

REMOVED_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("step", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
    pa.field("duplicate_of", pa.string(), nullable=True),
    pa.field("cluster_id", pa.string(), nullable=True),
    pa.field("source", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
])

# rows per Parquet row group: readers (tokenize) stream one group at a time
ROW_GROUP = 4096


def _jsonable(value: Any) -> Any:
    """numpy scalars and other odd values that steps may put into metadata."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def metadata_json(metadata: dict[str, Any]) -> str:
    """Metadata as compact JSON with sorted keys (same dict, same bytes)."""
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return json.dumps({k: clean(v) for k, v in metadata.items()}, ensure_ascii=False,
                      sort_keys=True, separators=(",", ":"), default=_jsonable)


def documents_table(docs: Sequence[Document]) -> pa.Table:
    """Kept-document rows (the `html` of a document is never written)."""
    return pa.table({
        "id": [d.id for d in docs],
        "text": [d.text for d in docs],
        "source": [d.source for d in docs],
        "url": [d.url for d in docs],
        "metadata": [metadata_json(d.metadata) for d in docs],
    }, schema=KEPT_SCHEMA)


def removal_row(removal: Removal, source: str = "", url: str = "") -> dict[str, Any]:
    """One row of removed/ for a removal (source and url from the document when known)."""
    return {"id": removal.id, "step": removal.step, "reason": removal.reason,
            "detail": removal.detail or "", "duplicate_of": removal.duplicate_of,
            "cluster_id": removal.cluster_id, "source": source, "url": url}


def removals_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """removed/ rows from dicts with the REMOVED_SCHEMA keys."""
    return pa.Table.from_pylist(list(rows), schema=REMOVED_SCHEMA)


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a table atomically with fixed settings (zstd, fixed row groups, no stats drift)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP,
                       write_statistics=True, use_dictionary=["step", "reason", "source"]
                       if "reason" in table.column_names else ["source"])


def read_table(path: str | Path, columns: list[str] | None = None,
               expect_rows: int | None = None, redo: str = "",
               filters: list[tuple[str, str, Any]] | None = None) -> pa.Table:
    """Read a Parquet file this stage wrote, checking it exists, parses and has its rows.

    `redo` says what to delete to have the file made again; it ends the error message.
    `filters` (pyarrow's row filters) skip row groups by their statistics.
    """
    path = Path(path)
    hint = f"; {redo}" if redo else ""
    if not path.is_file():
        raise ArtifactError(f"{path} is missing{hint}")
    try:
        table = pq.read_table(path, columns=columns, filters=filters)
    except (pa.ArrowException, OSError) as e:
        raise ArtifactError(f"{path} is corrupt ({e}){hint}") from None
    if expect_rows is not None and table.num_rows != expect_rows:
        raise ArtifactError(f"{path} is stale: it holds {table.num_rows} rows, "
                            f"{expect_rows} were recorded when it was written{hint}")
    return table
