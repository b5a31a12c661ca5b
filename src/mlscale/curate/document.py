"""The one `Document` type that flows through curation, and what a step returns for it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    """A document on its way through the pipeline.

    `id` is stable across runs: the id given in the input, else `<source>#<offset>` (the
    record's byte offset or line number in its file). `html` holds raw markup until the
    extract step turns it into `text`.
    """

    id: str
    text: str
    source: str = ""
    url: str = ""
    html: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Removal:
    """Why a document left the pipeline: the step, a short reason code, optional detail."""

    id: str
    step: str
    reason: str
    detail: str = ""
    duplicate_of: str | None = None
    cluster_id: str | None = None
