"""The normal form: fixed cases, and the numba kernel against a per-character reference."""
from __future__ import annotations

import json
import re
import unicodedata

from hypothesis import given, settings, strategies as st

from mlscale.curate.dedup.normalize import normalize_batch, normalize_text
from sample_data import ccnet_bytes

_NUMBER = re.compile(r"\d+(?:[.,،٫⎖⎗⎘]\d+)?")
_DECIMAL_SEPARATORS = set(".,،٫⎖⎗⎘")


def _fold(ch: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", ch.casefold())
                   if unicodedata.category(c) != "Mn")


def reference_normalize(text: str) -> str:
    """The documented rules, one character at a time with `unicodedata` and `re`."""
    out = []
    for ch in text:
        cp = ord(ch)
        if cp >= 0x20000:
            out.append("" if 0xE0000 <= cp < 0xE1000 else " " if cp >= 0xF0000 else ch)
            continue
        cat = unicodedata.category(ch)
        if cat == "Mn":
            continue
        if cat == "Nd" or ch in _DECIMAL_SEPARATORS:
            out.append(ch)  # kept until numbers are replaced
        elif cat == "Cn":
            out.append(ch)
        elif cat[0] in "LMN":
            out.append(_fold(ch))
        else:
            out.append(" ")
    s = _NUMBER.sub("0", "".join(out))
    s = "".join(" " if c in _DECIMAL_SEPARATORS else c for c in s)
    return " ".join(w for w in s.split(" ") if w)


def test_fixed_cases():
    assert normalize_text("Hello,   World!\n\tBye.") == "hello world bye"
    assert normalize_text("Café naïve Ångström") == "cafe naive angstrom"
    assert normalize_text("Straße ΟΔΟΣ") == "strasse οδοσ"  # casefold, final sigma
    assert normalize_text("pi is 3.14, e is 2,718; 1,000,000 x86") == "pi is 0 e is 0 0 0 x0"
    assert normalize_text("２０２４年 ١٢٣٫٤٥") == "0年 0"  # digits of any script
    assert normalize_text("a\u00a0b\u2003c\u200bd—e_f") == "a b c d e f"  # unicode spaces
    assert normalize_text("e\u0301te\u0301") == "ete"  # combining marks dropped in place
    assert normalize_text("日本語のテキスト") == "日本語のテキスト"
    assert normalize_text("") == ""
    assert normalize_text(" ... !!! ") == ""
    assert normalize_text("😀 smile 😀") == "smile"


def test_idempotent_and_batch_equals_single():
    texts = ["Hello, World!", "", "Ünïcödé 42.0 ok", "  lead and trail  "]
    buf, offsets = normalize_batch(texts)
    for i, text in enumerate(texts):
        got = buf[offsets[i]: offsets[i + 1]].tobytes().decode()
        assert got == normalize_text(text)
        assert normalize_text(got) == got


def test_matches_reference_on_real_web_text():
    lines = ccnet_bytes().decode("utf-8").split("\n")[:-1][:300]
    texts = [json.loads(line)["text"] for line in lines]
    assert any(not t.isascii() for t in texts)  # the sample exercises the unicode paths
    buf, offsets = normalize_batch(texts)
    for i, text in enumerate(texts):
        assert buf[offsets[i]: offsets[i + 1]].tobytes().decode() == reference_normalize(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
       | st.text(alphabet=st.sampled_from(list("aé1٣.,،٫ \u0301\u093f\u094d-ßİΣ\U0001F600"
                                               "\U00020000\U000E0100\U000F0000")),
                 max_size=30))
def test_kernel_matches_reference(text):
    assert normalize_text(text) == reference_normalize(text)
