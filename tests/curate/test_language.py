"""Language identification on real pages in four languages, thresholds and the fast path."""
from __future__ import annotations

from itertools import chain

import numpy as np
import pytest

from mlscale.curate.document import Document, Removal
from mlscale.curate.extract import ExtractStep
from mlscale.curate.language import LanguageConfig, LanguageFilter
from mlscale.curate.readers import ReadConfig, read_file
from mlscale.errors import ConfigError
from sample_data import DEBIAN_REFERENCE


@pytest.fixture(scope="module")
def debian_pages() -> list[Document]:
    """Debian Reference chapters (en, de, fr, ja), extracted: appendix A, the preface,
    chapters 7 and 8, and the language index page."""
    items = chain.from_iterable(read_file(path, ReadConfig()) for path in DEBIAN_REFERENCE)
    return [d for d in ExtractStep().run(items) if isinstance(d, Document)]


@pytest.fixture(scope="module")
def english_filter() -> LanguageFilter:
    return LanguageFilter()


def test_identifies_the_language_of_the_debian_reference_pages(debian_pages, english_filter):
    assert len(debian_pages) == 17
    wrong, kept = [], []
    for page in debian_pages:
        doc = Document(page.id, page.text, url=page.url)
        out = english_filter.process(doc)
        expected = page.url.rsplit(".", 2)[-2]  # ch01.de.html -> de
        if len(expected) != 2:
            continue  # index.html: a language chooser
        assert 0.0 <= doc.metadata["language_score"] <= 1.0
        if doc.metadata["language"] != expected:
            wrong.append(page.url)
        if isinstance(out, Document):
            assert doc.metadata["language"] == "en" and doc.metadata["language_score"] >= 0.65
            kept.append(expected)
        else:
            assert out.step == "language" and out.reason in ("wrong_language", "low_score")
            assert out.detail.split()[0] == doc.metadata["language"]
    # a few translated chapters are still mostly English upstream (ch07.fr, ch07.ja, ch08.fr)
    assert len(wrong) <= 3, wrong
    assert kept.count("en") == 4 and len(kept) - kept.count("en") == len(wrong)
    assert {p.url.rsplit(".", 2)[-2] for p in debian_pages} >= {"en", "de", "fr", "ja"}


def test_empty_language_list_keeps_every_confident_language(debian_pages):
    anything = LanguageFilter(LanguageConfig(languages=[], threshold=0.5))
    out = [anything.process(Document(p.id, p.text)) for p in debian_pages]
    assert sum(isinstance(o, Document) for o in out) >= 16


def test_threshold_boundary_is_inclusive(english_filter):
    text = "This is a short English sentence about the weather in the valley today."
    probe = Document("x", text)
    english_filter.process(probe)
    score = probe.metadata["language_score"]
    exact = float(english_filter.identifier.score_vector(text).max())
    at = LanguageFilter(LanguageConfig(threshold=exact))
    above = LanguageFilter(LanguageConfig(threshold=min(1.0, exact + 1e-4)))
    assert isinstance(at.process(Document("x", text)), Document)
    low = above.process(Document("x", text))
    assert isinstance(low, Removal) and low.reason == "low_score" and low.detail.startswith("en ")
    assert abs(score - exact) < 1e-4


def test_fast_path_matches_py3langid(debian_pages, english_filter):
    ident = english_filter.identifier
    assert ident._fast, "the numba walk should agree with py3langid on the probe texts"
    for page in debian_pages[::2]:  # 9 of the 17 pages, all four languages
        ref = np.asarray(ident.model._decide(page.text[:4000]))
        assert np.allclose(ident.score_vector(page.text[:4000]), ref, atol=1e-4)
    assert ident.classify("") [1] <= 1.0


def test_unknown_language_code_is_a_config_error():
    with pytest.raises(ConfigError, match="language.languages: unknown language code.*xx"):
        LanguageFilter(LanguageConfig(languages=["en", "xx"]))
