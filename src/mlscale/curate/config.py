"""`CurateConfig`: every setting of `mlscale curate`, one section per component.

    [read] [extract] [language] [quality] [exact] [near]   what each step does
    steps, on_error, [shard]                               what runs and how work is cut
    workers, executor, [ray]                               where it runs

Settings of where the work runs (workers, executor, ray) and of how bad records are
treated (on_error) do not change what a finished run writes, so they may differ between
a run and its resumption; everything else is part of the output's identity and a change
on an existing output directory is an error (use --force to start over).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlscale.config import option, to_dict
from mlscale.curate.dedup import ExactConfig, NearConfig
from mlscale.curate.extract import ExtractConfig
from mlscale.curate.filters import QualityConfig
from mlscale.curate.language import LanguageConfig
from mlscale.curate.readers import ReadConfig
from mlscale.errors import ConfigError

# the user-level steps, in the order they run (reading is implied)
STEPS = ("extract", "language", "quality", "exact", "near")
# keys that choose where and how leniently the work runs, not what it produces
EXECUTION_KEYS = ("workers", "executor", "ray", "on_error")


@dataclass
class ShardConfig:
    """How the work is cut into units: this bounds memory, not the corpus size."""

    input_bytes: int = option(
        64 << 20, "a larger input file is cut into ceil(size / input_bytes) work units "
        "(slices of its records) of the filter stage", min=1)
    pack_bytes: int = option(
        1 << 20, "consecutive smaller files are packed into one work unit up to this many "
        "bytes (a folder of many small pages makes few units)", min=1)
    dedup_docs: int = option(
        2_000_000, "documents per key partition of the exact and near stages: each "
        "bucketing task holds at most this many keys in memory", min=1)


@dataclass
class RayConfig:
    """Where the Ray executor runs."""

    address: str | None = option(
        None, "Ray cluster to join (e.g. 'auto' or 'ray://head:10001'); unset starts a "
        "local Ray with --workers CPUs")


@dataclass
class CurateConfig:
    """Settings of `mlscale curate`."""

    steps: list[str] = option(list(STEPS), "steps to run, in pipeline order (reading is "
                              "implied)", choices=STEPS)
    on_error: str = option("fail", "a malformed record: 'fail' stops naming file and line; "
                           "'skip' records it in removed/ (reason malformed) and goes on",
                           choices=("fail", "skip"))
    workers: int = option(0, "worker processes; 0 = all cores, 1 = run in this process",
                          min=0)
    executor: str = option("local", "where tasks run: local processes or a Ray cluster",
                           choices=("local", "ray"))
    ray: RayConfig = option(default_factory=RayConfig)
    shard: ShardConfig = option(default_factory=ShardConfig)
    read: ReadConfig = option(default_factory=ReadConfig)
    extract: ExtractConfig = option(default_factory=ExtractConfig)
    language: LanguageConfig = option(default_factory=LanguageConfig)
    quality: QualityConfig = option(default_factory=QualityConfig)
    exact: ExactConfig = option(default_factory=ExactConfig)
    near: NearConfig = option(default_factory=NearConfig)

    def validate(self) -> None:
        if not self.steps:
            raise ConfigError(f"steps: choose at least one of {', '.join(STEPS)}")
        # one canonical order, so 'quality,extract' and 'extract,quality' are one config
        self.steps = [s for s in STEPS if s in self.steps]

    def identity(self) -> dict[str, Any]:
        """The settings that decide the output (what an existing OUT is compared on)."""
        data = to_dict(self)
        for key in EXECUTION_KEYS:
            data.pop(key, None)
        return data

    def execution(self) -> dict[str, Any]:
        """The settings that only decide where and how the work runs."""
        data = to_dict(self)
        return {key: data[key] for key in EXECUTION_KEYS}
