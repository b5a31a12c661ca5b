"""`VisionExperimentConfig`: an experiment file of kind "vision", one table per stage.

    kind = "vision", name, out
    [inputs]     images = [...]: what `mlscale images` reads ('@fashion-mnist' is bundled)
    [images]     the keys of `mlscale images`
    [train]      the keys of `mlscale train --task classify` ([train.model], [train.train]...)
    [evaluate]   the flags of `mlscale evaluate`

Overrides address a stage's keys with its table as prefix, e.g.
`--train.train.max_steps=300` or `--images.dedup.near_radius=-1`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlscale.config import option
from mlscale.errors import ConfigError
from mlscale.images.config import ImagesConfig
from mlscale.images.shards import SPLITS
from mlscale.tasks.classify import ClassifyConfig

BUNDLED_FASHION_MNIST = "@fashion-mnist"


@dataclass
class VisionInputsConfig:
    images: list[str] = option(
        [BUNDLED_FASHION_MNIST], "inputs of `mlscale images` (IDX files, ImageFolder trees, "
        "WebDataset shards, Parquet, CSV); '@fashion-mnist' is the bundled subset of "
        "Fashion-MNIST (3,000 train and 1,000 test images). Relative paths are taken from the "
        "experiment file's folder")


@dataclass
class VisionEvaluateConfig:
    """Settings of the evaluate stage (the flags of `mlscale evaluate`)."""

    split: str = option("val", "split of the image directory to score", choices=SPLITS)
    device: str = option("cpu", "device to evaluate on", choices=("auto", "cpu", "cuda", "mps"))


@dataclass
class VisionExperimentConfig:
    """Everything `mlscale run` is configured by for an image classifier."""

    kind: str = option("vision", "the kind of experiment: vision (images -> train -> evaluate)",
                       choices=("vision",))
    name: str = option("vision experiment", "the experiment's name, shown in the report")
    out: str = option("out-vision", "output directory (relative to the working directory); --out wins")
    inputs: VisionInputsConfig = option(default_factory=VisionInputsConfig)
    images: ImagesConfig = option(default_factory=ImagesConfig)
    train: ClassifyConfig = option(default_factory=ClassifyConfig)
    evaluate: VisionEvaluateConfig = option(default_factory=VisionEvaluateConfig)

    def validate(self) -> None:
        if not self.inputs.images:
            raise ConfigError("inputs.images: give at least one image input")


def resolve_image_inputs(cfg: VisionExperimentConfig, base: Path, source: str) -> list[Path]:
    """The image input paths, resolved against `base`; a missing one fails naming it."""
    from mlscale.data import fashion_mnist_sample

    paths = []
    for entry in cfg.inputs.images:
        if entry == BUNDLED_FASHION_MNIST:
            paths.append(fashion_mnist_sample())
            continue
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.exists():
            raise ConfigError(f"{source}: [inputs] images: {entry!r} not found ({p})")
        paths.append(p.resolve())
    return paths
