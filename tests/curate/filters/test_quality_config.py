"""QualityConfig: published defaults, overrides, and the step list."""
from __future__ import annotations

import pytest
from sample_data import CC_WARCS

from mlscale.config import describe, load_config
from mlscale.curate.document import Document, Removal
from mlscale.curate.extract import ExtractStep
from mlscale.curate.filters import (C4Filter, FineWebFilter, GopherQualityFilter, GopherRepetitionFilter,
                                    QualityConfig, quality_steps)
from mlscale.curate.readers import ReadConfig, read_file
from mlscale.curate.step import run_steps
from mlscale.errors import ConfigError


def test_defaults_are_the_published_thresholds():
    q = QualityConfig()
    g = q.gopher_quality
    assert (g.min_words, g.max_words, g.min_mean_word_length, g.max_mean_word_length) == (50, 100_000, 3, 10)
    assert (g.max_hash_ratio, g.max_ellipsis_ratio, g.max_bullet_lines, g.max_ellipsis_lines) == (0.1, 0.1, 0.9, 0.3)
    assert (g.min_alpha_words, g.min_stop_words) == (0.8, 2)
    assert set(g.stop_words) == {"the", "be", "to", "of", "and", "that", "have", "with"}
    r = q.gopher_repetition
    assert (r.max_dup_line_frac, r.max_dup_para_frac, r.max_dup_line_char_frac, r.max_dup_para_char_frac) == \
        (0.3, 0.3, 0.2, 0.2)
    assert dict(zip(r.top_ngram_sizes, r.top_ngram_max_fracs)) == {2: 0.20, 3: 0.18, 4: 0.16}
    assert dict(zip(r.dup_ngram_sizes, r.dup_ngram_max_fracs)) == {
        5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    c = q.c4
    assert (c.min_words_per_line, c.max_word_length, c.min_sentences) == (3, 1000, 5)
    f = q.fineweb
    assert (f.min_line_punct_ratio, f.max_short_line_ratio, f.short_line_length,
            f.max_char_dup_ratio, f.max_newline_word_ratio) == (0.12, 0.67, 30, 0.01, 0.3)


def test_overrides_switch_rules_and_filters():
    q = load_config(QualityConfig, overrides=[
        "--gopher_quality.max_hash_ratio=none", "--c4.enabled=false", "--fineweb.short_line_length", "40",
        "--gopher_repetition.dup_ngram_sizes=5,6", "--gopher_repetition.dup_ngram_max_fracs=0.2,0.1"])
    assert q.gopher_quality.max_hash_ratio is None and q.fineweb.short_line_length == 40
    assert q.gopher_repetition.dup_ngram_sizes == [5, 6]
    steps = quality_steps(q)
    assert [type(s) for s in steps] == [GopherRepetitionFilter, GopherQualityFilter, FineWebFilter]
    assert [s.name for s in quality_steps()] == ["gopher_repetition", "gopher_quality", "c4", "fineweb"]
    with pytest.raises(ConfigError, match="unknown config key 'gopher_quality.max_hash_ration'"):
        load_config(QualityConfig, overrides=["--gopher_quality.max_hash_ration=0.2"])
    with pytest.raises(ConfigError, match="fineweb.max_short_line_ratio: 1.5 is above the maximum"):
        load_config(QualityConfig, overrides=["--fineweb.max_short_line_ratio=1.5"])
    assert len(describe(QualityConfig)) > 30


def test_real_pages_through_the_whole_chain_end_with_documented_reasons():
    items = read_file(CC_WARCS["sample-0000.warc.gz"], ReadConfig())
    out = list(run_steps([ExtractStep(), *quality_steps()], items))
    assert len(out) == 22
    kept = [o for o in out if isinstance(o, Document)]
    removed = [o for o in out if isinstance(o, Removal)]
    assert kept and removed
    for r in removed:
        assert r.step in ("extract", "gopher_repetition", "gopher_quality", "c4", "fineweb")
        assert r.step == "extract" or r.reason.startswith(r.step + ":")
    for d in kept:
        assert len(d.text.split()) >= 50 and "{" not in d.text
