"""`ImagesConfig`: every setting of `mlscale images`, one section per component.

    [images] [split] [dedup] [shards]     what the output holds
    on_error, workers, executor, [ray]    how leniently and where the work runs

Execution settings do not change what a finished run writes, so they may differ between
a run and its resumption; a change to any other key on an existing output directory is
an error (use --force to start over).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlscale.config import option, to_dict

EXECUTION_KEYS = ("on_error", "workers", "executor", "ray")


@dataclass
class PictureConfig:
    """How every image is decoded into the one shape of the output."""

    size: int = option(0, "0 keeps the native size (every image must have the same one); N "
                          "resizes the shorter side to N and center-crops to N x N", min=0, max=4096)
    mode: str = option("auto", "channels: L (grey, C=1), RGB (C=3), or auto (L when every image "
                               "is grey, else RGB)", choices=("auto", "L", "RGB"))


@dataclass
class SplitConfig:
    val_fraction: float = option(0.1, "share of images (by a hash of their id) that go to val when "
                                      "the input has no split of its own", min=0.0, max=0.9)
    seed: int = option(0, "salt of the image-id hash that assigns images to splits", min=0)


@dataclass
class DedupConfig:
    exact: bool = option(True, "remove exact duplicates (same decoded pixels)")
    near_radius: int = option(4, "remove near duplicates: 64-bit DCT perceptual hashes at most this "
                                 "many bits apart are candidates (-1 turns it off; the hash has "
                                 "32 bits set, so distances are even)", min=-1, max=16)
    near_max_diff: float = option(0.02, "a candidate pair is a near duplicate when the mean absolute "
                                        "difference of their decoded pixels is at most this share of "
                                        "255 (1 accepts every candidate)", min=0.0, max=1.0)


@dataclass
class ShardConfig:
    images: int = option(50_000, "images per output shard (the last of a split is shorter)", min=1)
    unit_images: int = option(10_000, "images decoded per work unit: what an interrupted run "
                                      "resumes from", min=1)


@dataclass
class RayConfig:
    address: str | None = option(None, "Ray cluster to join (e.g. 'auto'); unset starts a local "
                                       "Ray with --workers CPUs")


@dataclass
class ImagesConfig:
    """Settings of `mlscale images`."""

    images: PictureConfig = option(default_factory=PictureConfig)
    split: SplitConfig = option(default_factory=SplitConfig)
    dedup: DedupConfig = option(default_factory=DedupConfig)
    shards: ShardConfig = option(default_factory=ShardConfig)
    on_error: str = option("skip", "a bad image or record: 'skip' records it in removed/ with its "
                                   "reason; 'fail' stops with one error naming the file",
                           choices=("skip", "fail"))
    workers: int = option(0, "worker processes; 0 = all cores, 1 = run in this process", min=0)
    executor: str = option("local", "where work units run: local processes or a Ray cluster",
                           choices=("local", "ray"))
    ray: RayConfig = option(default_factory=RayConfig)

    def identity(self) -> dict[str, Any]:
        """The settings that decide the output (what an existing DIR is compared on)."""
        data = to_dict(self)
        for key in EXECUTION_KEYS:
            data.pop(key, None)
        return data
