"""Builders and real inputs shared by the quality-filter tests (imported as `filter_helpers`)."""
from __future__ import annotations

from mlscale.curate.document import Document, Removal
from mlscale.curate.step import DocumentStep
from sample_data import CC_WARCS, CCNET_ZST, PYTHON_DOCS, shakespeare_text

# mean length 5.0, three of Gopher's stop words (the, and, with)
VOCAB = "the garden river house and with morning light walked slowly".split()


def prose(n: int, start: int = 0) -> str:
    """`n` words of plain English-like prose that passes every Gopher quality rule."""
    return " ".join(VOCAB[(start + i) % len(VOCAB)] for i in range(n))


def verdict(step: DocumentStep, text: str) -> str | None:
    """None if `step` keeps a document with `text`, else its reason code."""
    out = step.process(Document("d", text))
    return out.reason if isinstance(out, Removal) else None


def load_real_texts() -> list[str]:
    """Real documents: extracted Common Crawl pages and Python docs, CCNet text, Shakespeare."""
    from mlscale.curate.extract import ExtractStep
    from mlscale.curate.readers import ReadConfig, read_file

    texts: list[str] = []
    for path, limit in ((CC_WARCS["sample-0000.warc.gz"], 30),
                        (CC_WARCS["sample-0001.warc.gz"], 30),
                        (PYTHON_DOCS, 40)):
        items = [i for _, i in zip(range(limit), read_file(path, ReadConfig()))]
        texts += [d.text for d in ExtractStep().run(items) if isinstance(d, Document)]
    texts += [d.text for d in read_file(CCNET_ZST, ReadConfig())]
    plays = shakespeare_text()
    texts += [plays[i:i + 3000] for i in range(0, 60_000, 3000)]
    return texts
