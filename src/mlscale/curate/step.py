"""Composable curation steps.

A step turns a stream of documents into a stream of documents: `run(docs) -> docs`, a
generator. A document a step drops comes out as a `Removal` in the same stream, and
later steps pass removals through untouched, so every input ends either kept or removed
with its step and reason and the counts always reconcile. What the steps are is kept
apart from where they run (see mlscale.executors).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator, Union

from mlscale.curate.document import Document, Removal

Item = Union[Document, Removal]


class Step(ABC):
    """One pipeline step over a stream (override `run` to batch, e.g. for vectorised work)."""

    name: str = "step"

    @abstractmethod
    def run(self, docs: Iterable[Item]) -> Iterator[Item]:
        """Yield every item: documents kept or changed, removals passed through or added."""


class DocumentStep(Step):
    """A step that looks at one document at a time."""

    @abstractmethod
    def process(self, doc: Document) -> Item:
        """Return the (possibly changed) document, or a `Removal` saying why it is dropped."""

    def run(self, docs: Iterable[Item]) -> Iterator[Item]:
        for doc in docs:
            yield doc if isinstance(doc, Removal) else self.process(doc)


class Filter(DocumentStep):
    """A step that answers keep, or drop with a reason, without changing the document."""

    @abstractmethod
    def check(self, doc: Document) -> str | None:
        """None to keep the document, else a short reason code (e.g. 'gopher_short')."""

    def process(self, doc: Document) -> Item:
        reason = self.check(doc)
        return doc if reason is None else Removal(doc.id, self.name, reason)


def run_steps(steps: Iterable[Step], docs: Iterable[Item]) -> Iterator[Item]:
    """Chain steps lazily: the output of one is the input of the next."""
    stream: Iterable[Item] = docs
    for step in steps:
        stream = step.run(stream)
    yield from stream
