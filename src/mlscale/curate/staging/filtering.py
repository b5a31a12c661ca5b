"""The filter stage: read a unit's input (files, or a slice of one), extract, language, quality.

The steps are chained lazily (`run_steps` style), with a tap around each that counts the
documents going in and out, times the step, and remembers the documents inside the step
so that a removal can be recorded with its source, url and an example of its text. The
shard's surviving documents and its removal records are written as Parquet; the counts,
histograms and examples are the unit's result.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mlscale.artifacts import fingerprint_obj
from mlscale.curate.config import CurateConfig
from mlscale.curate.document import Document, Removal
from mlscale.curate.output import documents_table, removal_row, removals_table, write_table
from mlscale.curate.staging.layout import save_npy
from mlscale.curate.staging.plan import Context, FilterUnit, Piece, input_order
from mlscale.curate.staging.stats import (LENGTH_EDGES, SCORE_EDGES, StepStats, example,
                                          histogram)
from mlscale.curate.step import Item, Step

LANGUAGE_SCORE_KEYS = ("language_score",)
# a document's input-order key rides in its metadata through the steps (steps may batch or
# replace documents); it is taken out again before anything is written
ORDER_KEY = "_mlscale_input_order"
_STEPS_CACHE: dict[str, list[tuple[str, Step]]] = {}


def build_filter_steps(cfg: CurateConfig) -> list[tuple[str, Step]]:
    """(user-level step, step) pairs of the filter stage, in order, as `cfg.steps` asks."""
    from mlscale.curate.extract import ExtractStep
    from mlscale.curate.filters import quality_steps
    from mlscale.curate.language import LanguageFilter

    steps: list[tuple[str, Step]] = []
    if "extract" in cfg.steps:
        steps.append(("extract", ExtractStep(cfg.extract)))
    if "language" in cfg.steps:
        steps.append(("language", LanguageFilter(cfg.language)))
    if "quality" in cfg.steps:
        steps += [("quality", s) for s in quality_steps(cfg.quality)]
    return steps


def filter_steps(cfg: CurateConfig) -> list[tuple[str, Step]]:
    """The steps for `cfg`, built once per process (loading a language model takes time)."""
    key = fingerprint_obj(cfg.identity())
    if key not in _STEPS_CACHE:
        _STEPS_CACHE[key] = build_filter_steps(cfg)
    return _STEPS_CACHE[key]


def _timed(items: Iterable[Item], add: Callable[[float], None]) -> Iterator[Item]:
    """Pass items through, adding the time spent producing each to `add`."""
    it = iter(items)
    clock = time.perf_counter
    while True:
        t0 = clock()
        try:
            item = next(it)
        except StopIteration:
            add(clock() - t0)
            return
        add(clock() - t0)
        yield item


def _language_score(doc: Document | None, removal: Removal | None = None) -> float | None:
    if doc is not None:
        for key in LANGUAGE_SCORE_KEYS:
            value = doc.metadata.get(key)
            if isinstance(value, (int, float)):
                return float(value)
    return None


class _Funnel:
    """The taps of one unit: counts, timings, removal rows and examples per step."""

    def __init__(self, unit: FilterUnit):
        self.unit = unit
        self.read = StepStats("read", "read")
        self.stats: list[StepStats] = []
        self.inclusive: list[float] = [0.0]
        self.rows: list[dict[str, Any]] = []
        self.examples: dict[str, dict[str, Any]] = {}
        self.lengths: list[int] = []
        self.scores: list[float] = []

    def _record(self, removal: Removal, doc: Document | None, stats: StepStats,
                source: str = "") -> None:
        stats.removed[removal.reason] = stats.removed.get(removal.reason, 0) + 1
        source = doc.source if doc is not None and doc.source else source
        url = doc.url if doc is not None else ""
        self.rows.append(removal_row(removal, source, url))
        key = f"{removal.step}/{removal.reason}"
        if key not in self.examples:
            text = "" if doc is None else (doc.text or doc.html or "")
            self.examples[key] = example(removal.id, removal.step, removal.reason, text=text,
                                         detail=removal.detail, url=url, source=source)

    def reader(self, read: Callable[[Piece], Iterable[Item]]) -> Iterator[Item]:
        """The records of the unit's pieces (each file, or its slice), counted as `read`."""

        def add(dt: float) -> None:
            self.inclusive[0] += dt

        for piece in self.unit.pieces:
            k, n = piece.slice, piece.slices
            for i, item in enumerate(_timed(read(piece), add)):
                if i % n != k:
                    continue
                self.read.docs_in += 1
                if isinstance(item, Removal):
                    self._record(item, None, self.read, piece.source)
                else:
                    self.read.docs_out += 1
                    item.metadata[ORDER_KEY] = input_order(piece.file_index, i)
                yield item

    def around(self, group: str, step: Step, stream: Iterable[Item]) -> Iterator[Item]:
        """Run `step` on `stream` with a tap on each side (steps register in chain order)."""
        stats = StepStats(step.name, group)
        self.stats.append(stats)
        index = len(self.inclusive)
        self.inclusive.append(0.0)
        return self._tapped(group, step, stream, stats, index)

    def _tapped(self, group: str, step: Step, stream: Iterable[Item], stats: StepStats,
                index: int) -> Iterator[Item]:
        inside: dict[str, deque[Document]] = defaultdict(deque)

        def enter(items: Iterable[Item]) -> Iterator[Item]:
            for item in items:
                if isinstance(item, Document):
                    stats.docs_in += 1
                    inside[item.id].append(item)
                yield item

        def add(dt: float) -> None:
            self.inclusive[index] += dt

        for item in _timed(step.run(enter(stream)), add):
            queue = inside.get(item.id)
            doc = queue.popleft() if queue else None
            if queue is not None and not queue:
                del inside[item.id]
            if isinstance(item, Document):
                stats.docs_out += 1
                if group == "language":
                    score = _language_score(item)
                    if score is not None:
                        self.scores.append(score)
            elif doc is not None:  # a removal made by this step (others pass through)
                self._record(item, doc, stats)
                if group == "language":
                    score = _language_score(doc)
                    if score is not None:
                        self.scores.append(score)
            yield item

    def finish(self) -> list[dict[str, Any]]:
        """Per-step JSON, with each step's own seconds (inclusive minus upstream)."""
        self.read.seconds = self.inclusive[0]
        for i, stats in enumerate(self.stats, start=1):
            stats.seconds = max(0.0, self.inclusive[i] - self.inclusive[i - 1])
        return [self.read.to_json()] + [s.to_json() for s in self.stats]


def run_filter_unit(ctx: Context, unit: FilterUnit) -> dict[str, Any]:
    """Read, extract, language, quality for one slice; write the shard; report counts."""
    from mlscale.curate.readers import read_file

    cfg = ctx.config
    funnel = _Funnel(unit)
    stream: Iterable[Item] = funnel.reader(
        lambda piece: read_file(piece.path, cfg.read, on_error=cfg.on_error, source=piece.source))
    steps = filter_steps(cfg)
    measured_length = False
    for group, step in steps:
        if not measured_length and group != "extract":
            stream = _lengths(stream, funnel.lengths)
            measured_length = True
        stream = funnel.around(group, step, stream)
    if not measured_length:
        stream = _lengths(stream, funnel.lengths)
    kept = [item for item in stream if isinstance(item, Document)]
    order = np.array([doc.metadata.pop(ORDER_KEY) for doc in kept], dtype=np.int64)
    layout = ctx.layout
    write_table(documents_table(kept), layout.docs(unit.shard))
    save_npy(layout.order(unit.shard), order)
    write_table(removals_table(funnel.rows), layout.filter_removed(unit.shard))
    steps_json = funnel.finish()
    return {
        "sources": sorted({p.source for p in unit.pieces}),
        "records": funnel.read.docs_in, "documents": len(kept), "removed": len(funnel.rows),
        "steps": steps_json, "examples": funnel.examples,
        "hist": {"length_extracted": histogram(funnel.lengths, LENGTH_EDGES),
                 "language_score": histogram(funnel.scores, SCORE_EDGES)},
    }


def _lengths(items: Iterable[Item], lengths: list[int]) -> Iterator[Item]:
    """Record the text length of each document passing (after extraction)."""
    for item in items:
        if isinstance(item, Document):
            lengths.append(len(item.text))
        yield item
