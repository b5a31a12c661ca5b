"""Fixtures of the quality-filter tests."""
from __future__ import annotations

import pytest
from filter_helpers import load_real_texts


@pytest.fixture(scope="session")
def real_texts() -> list[str]:
    """Real documents: extracted Common Crawl pages and Python docs, CCNet text, Shakespeare."""
    return load_real_texts()
