"""HTML extraction: main text of real pages, boilerplate dropped, non-HTML untouched."""
from __future__ import annotations

import re

from mlscale.curate.document import Document, Removal
from mlscale.curate.extract import ExtractConfig, ExtractStep
from mlscale.curate.readers import ReadConfig, read_file
from sample_data import CC_WARCS, DEBIAN_REFERENCE

TAG = re.compile(r"</?(?:div|p|span|a|table|tr|td|li|ul|body|head|script)\b[^>]*>", re.I)

PAGE = """<html><head><title>T</title><script>var tracking = 1;</script></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/shop">Shop</a></li></ul></nav>
<header><div class="menu">Sign in | Register | Cart</div></header>
<main><article><h1>Growing tomatoes</h1>
<p>Tomatoes need at least six hours of direct sunlight every day to produce a good crop.</p>
<p>Water them deeply twice a week rather than a little every day, so that roots grow down.</p>
<ul><li>Stake the plants early, before the stems grow heavy with fruit and start to bend over.</li>
<li>Pinch out the side shoots that grow between the main stem and the branches every week.</li></ul>
<img src="t.jpg" alt="A ripe red tomato">
</article></main>
<footer><p>Copyright 2024 Example Gardens. All rights reserved. Privacy | Terms</p></footer>
</body></html>"""


def test_main_content_keeps_the_article_and_drops_boilerplate():
    doc = ExtractStep().process(Document(id="p", text="", html=PAGE))
    assert isinstance(doc, Document) and doc.html is None
    assert "six hours of direct sunlight" in doc.text and "Water them deeply" in doc.text
    for boiler in ("Sign in", "Copyright 2024", "tracking", "A ripe red tomato", "<p>"):
        assert boiler not in doc.text
    whole = ExtractStep(ExtractConfig(main_content=False, alt_texts=True)).process(
        Document(id="p", text="", html=PAGE))
    assert "Copyright 2024" in whole.text and "A ripe red tomato" in whole.text
    assert "\u2022 Stake the plants early, before" in whole.text  # list bullets


def test_documents_without_html_pass_unchanged_and_empty_pages_are_removed():
    plain = Document(id="t", text="already text")
    assert ExtractStep().process(plain) is plain and plain.text == "already text"
    removed = ExtractStep().process(Document(id="e", text="", html="<html><body> </body></html>"))
    assert isinstance(removed, Removal) and (removed.step, removed.reason) == ("extract", "no_text")


def test_real_warc_pages_extract_to_readable_text():
    items = list(read_file(DEBIAN_REFERENCE[0], ReadConfig()))  # the bundled sample's 13 pages
    out = list(ExtractStep().run(items[:12]))
    docs = [d for d in out if isinstance(d, Document)]
    assert len(docs) == 12
    for d in docs:
        assert len(d.text) > 500 and not TAG.search(d.text)
    en = next(d for d in docs if d.url.endswith("apa.en.html"))
    assert "Debian" in en.text
    cc = list(ExtractStep().run(read_file(CC_WARCS["sample-0001.warc.gz"], ReadConfig())))
    kept = [d for d in cc if isinstance(d, Document)]
    assert len(kept) >= 15 and all(d.text.strip() == d.text for d in kept)
    assert all(o.reason == "no_text" for o in cc if isinstance(o, Removal))
