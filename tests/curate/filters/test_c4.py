"""C4 line and document rules."""
from __future__ import annotations

from filter_helpers import verdict

from mlscale.curate.document import Document, Removal
from mlscale.curate.filters.c4 import C4Config, C4Filter
from mlscale.curate.text import split_sentences

GOOD = [f"This is good sentence number {i} about the garden." for i in range(5)]


def run(lines: list[str], **cfg) -> Document | Removal:
    return C4Filter(C4Config(**cfg)).process(Document("d", "\n".join(lines)))


def test_five_good_sentences_are_kept_unchanged():
    out = run(GOOD)
    assert isinstance(out, Document) and out.text == "\n".join(GOOD)
    assert "c4_removed_lines" not in out.metadata


def test_too_few_sentences_counts_sentences_not_lines():
    four = run(GOOD[:4])
    assert isinstance(four, Removal) and four.reason == "c4:too_few_sentences" and four.step == "c4"
    two_lines = run(["One sentence here. Two sentences here. Three sentences here.",
                     "Four sentences here. Dr. Smith said five sentences here."])
    assert isinstance(two_lines, Document)
    assert isinstance(run(GOOD[:4], min_sentences=0), Document)


def test_bad_lines_are_removed_and_counted():
    noise = ["Menu", "Please enable JavaScript to view this page properly.",
             "This site uses cookies to improve your experience.", "Read our Privacy Policy here now.",
             "A " + "x" * 1001 + " word line.", "   ", "two words"]
    out = run(GOOD[:3] + noise + GOOD[3:])
    assert isinstance(out, Document) and out.text == "\n".join(GOOD)
    assert out.metadata["c4_removed_lines"] == 6


def test_document_killers_lorem_ipsum_and_curly_brackets():
    assert verdict(C4Filter(), "\n".join(GOOD + ["Lorem ipsum dolor sit amet, consectetur."])) == "c4:lorem_ipsum"
    assert verdict(C4Filter(), "\n".join(GOOD + ["function f() { return 1; } is code."])) == "c4:curly_bracket"
    assert verdict(C4Filter(C4Config(curly_bracket=False, lorem_ipsum=False)),
                   "\n".join(GOOD + ["x = { y } is fine now.", "lorem ipsum is fine now."])) is None
    # a "{" in a line removed for another reason does not kill the document
    assert verdict(C4Filter(), "\n".join(GOOD + ["{x}"])) is None


def test_citations_and_terminal_punctuation():
    out = run([g.replace("garden.", "garden[1].") for g in GOOD] + ["No full stop at the end of this line"])
    assert isinstance(out, Document) and "[1]" not in out.text
    assert out.text.endswith("No full stop at the end of this line")  # FineWeb keeps it
    strict = run(GOOD + ["No full stop at the end of this line", "Trailing off..."], terminal_punct=True)
    assert strict.text == "\n".join(GOOD) and strict.metadata["c4_removed_lines"] == 2


def test_sentence_splitter():
    assert split_sentences("Mr. J. Smith went home. He said \"hi!\" Then e.g. nothing") == [
        "Mr. J. Smith went home.", "He said \"hi!\"", "Then e.g. nothing"]
    assert split_sentences("これは文です。これも文です。") == ["これは文です。", "これも文です。"]
    assert split_sentences("   ") == [] and split_sentences("3.14 is pi") == ["3.14 is pi"]
