"""Heuristic quality filters: Gopher quality, Gopher repetition, C4 and FineWeb.

`quality_steps(cfg)` returns the enabled filters in FineWeb's order (datatrove
`examples/fineweb.py`): Gopher repetition, Gopher quality, C4, FineWeb. C4 removes lines
before FineWeb looks at the text. Every threshold is a config key under `quality.<filter>`,
with the published value (shared/anchors.md) as its default; each filter has `enabled`,
and most rules switch off with `none`, e.g. `--quality.c4.enabled=false` or
`--quality.gopher_quality.max_hash_ratio=none`. Each module's docstring lists its reason codes.
"""
from __future__ import annotations

from dataclasses import dataclass

from mlscale.config import option
from mlscale.curate.filters.c4 import C4Config, C4Filter
from mlscale.curate.filters.fineweb import FineWebConfig, FineWebFilter
from mlscale.curate.filters.gopher_quality import GopherQualityConfig, GopherQualityFilter
from mlscale.curate.filters.gopher_repetition import GopherRepetitionConfig, GopherRepetitionFilter
from mlscale.curate.step import Step

__all__ = [
    "QualityConfig", "quality_steps",
    "GopherQualityConfig", "GopherQualityFilter",
    "GopherRepetitionConfig", "GopherRepetitionFilter",
    "C4Config", "C4Filter", "FineWebConfig", "FineWebFilter",
]


@dataclass
class QualityConfig:
    """The quality filters, one section each."""

    gopher_repetition: GopherRepetitionConfig = option(
        default_factory=GopherRepetitionConfig, help="Gopher repetition rules")
    gopher_quality: GopherQualityConfig = option(
        default_factory=GopherQualityConfig, help="Gopher quality rules")
    c4: C4Config = option(default_factory=C4Config, help="C4 line and document rules")
    fineweb: FineWebConfig = option(default_factory=FineWebConfig, help="FineWeb rules")


def quality_steps(cfg: QualityConfig | None = None) -> list[Step]:
    """The enabled quality filters, in FineWeb's order."""
    cfg = cfg or QualityConfig()
    steps: list[Step] = []
    if cfg.gopher_repetition.enabled:
        steps.append(GopherRepetitionFilter(cfg.gopher_repetition))
    if cfg.gopher_quality.enabled:
        steps.append(GopherQualityFilter(cfg.gopher_quality))
    if cfg.c4.enabled:
        steps.append(C4Filter(cfg.c4))
    if cfg.fineweb.enabled:
        steps.append(FineWebFilter(cfg.fineweb))
    return steps
