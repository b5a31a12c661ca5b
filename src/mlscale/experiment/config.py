"""`ExperimentConfig`: one experiment file, one table per stage.

    name, out                  what the experiment is called and where it writes
    [inputs]                   raw documents to curate, plain text to add after curation
    [curate] [tokenize] [pretrain]   the same keys as `mlscale curate / tokenize / pretrain`
    [evaluate] [generate]      the same settings as the flags of `mlscale evaluate / generate`
    [scaling]                  optional (enabled = true): an IsoFLOP sweep on the tokens, and its fit
    [finetune]                 optional (enabled = true, data_file = ...): `mlscale finetune` keys

Overrides address a stage's keys with its table as prefix, e.g.
`--pretrain.train.max_steps=300` or `--curate.near.threshold=0.7`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlscale.config import from_dict, load_config, option, to_dict
from mlscale.curate.config import CurateConfig
from mlscale.errors import ConfigError
from mlscale.finetune.config import FINETUNE_DEFAULTS, FinetuneConfig
from mlscale.tokenize.config import TokenizeConfig
from mlscale.train.config import PretrainConfig

# names that stand for files shipped in the package
BUNDLED_SAMPLE = "@sample"
BUNDLED_SHAKESPEARE = "@shakespeare"


@dataclass
class InputsConfig:
    """What the experiment reads."""

    documents: list[str] = option(
        [BUNDLED_SAMPLE], "raw documents to curate: files or folders (WARC, JSONL, Parquet, "
        "HTML, text); '@sample' is the bundled sample of real web pages. Relative paths are "
        "taken from the experiment file's folder")
    text: list[str] = option(
        [BUNDLED_SHAKESPEARE], "plain-text files (.txt, .txt.gz) joined to the curated "
        "documents for tokenization, cut into passages at blank lines; '@shakespeare' is the "
        "bundled tiny Shakespeare")
    passage_chars: int = option(
        2000, "a plain-text file is cut into passages of about this many characters (at blank "
        "lines), each a document that goes to train or val by a hash of its id", min=100)


@dataclass
class EvaluateConfig:
    """Settings of the evaluate stage (the flags of `mlscale evaluate`)."""

    split: str = option("val", "split of the token directory to score", choices=("train", "val"))
    batch_size: int = option(16, "windows per forward pass", min=1)
    max_tokens: int = option(0, "score only the first N tokens; 0 = all of the split", min=0)
    device: str = option("cpu", "device to evaluate on", choices=("auto", "cpu", "cuda", "mps"))


@dataclass
class GenerateConfig:
    """Settings of the generate stage (the flags of `mlscale generate`)."""

    prompts: list[str] = option(["ROMEO:", "The "], "prompts to continue, one sample set each")
    max_new_tokens: int = option(200, "tokens to generate per sample", min=1)
    temperature: float = option(0.8, "softmax temperature; 0 = greedy", min=0.0)
    top_k: int = option(0, "sample among the k most likely tokens; 0 = no limit", min=0)
    top_p: float = option(0.95, "nucleus sampling threshold; 1 = no limit", min=0.0, max=1.0)
    seed: int = option(0, "random seed of the sampling")
    num_samples: int = option(2, "samples per prompt", min=1)
    device: str = option("cpu", "device to sample on", choices=("auto", "cpu", "cuda", "mps"))

    def validate(self) -> None:
        if not self.prompts:
            raise ConfigError("generate.prompts: give at least one prompt (\"\" starts a document)")
        if self.top_p <= 0:
            raise ConfigError("generate.top_p must be above 0 (1 = no limit)")


@dataclass
class ScalingStageConfig:
    """The optional scaling stage: `mlscale scaling sweep` on the tokens, then `scaling fit`."""

    enabled: bool = option(False, "run an IsoFLOP sweep (its runs start from the [pretrain] "
                           "settings) and fit a scaling law to it")
    budgets: list[float] = option([1e12, 3e12, 6e12], "training FLOP budgets of the sweep")
    sizes: int = option(4, "model sizes (depths of the depth preset) per budget", min=2)
    tokens_per_param: float = option(20.0, "prior compute-optimal D/N that centres each profile",
                                     min=0.1)
    law: str = option("chinchilla", "law fitted to the sweep",
                      choices=("chinchilla", "kaplan", "isoflop"))
    bootstrap: int = option(100, "bootstrap resamples for the fit's intervals; 0 = none", min=0)


@dataclass
class FinetuneStageConfig(FinetuneConfig):
    """The optional finetune stage: `mlscale finetune` of the pretrained model."""

    enabled: bool = option(False, "fine-tune the pretrained model (set data_file too)")
    data_file: str = option("", "instruction or preference data (the --data of `mlscale "
                            "finetune`); relative paths are taken from the experiment file's folder")


@dataclass
class ExperimentConfig:
    """Everything `mlscale run` is configured by."""

    kind: str = option("language", "the kind of experiment: language (curate -> tokenize -> pretrain "
                       "-> evaluate -> generate); vision files are read by VisionExperimentConfig",
                       choices=("language",))
    name: str = option("experiment", "the experiment's name, shown in the report")
    out: str = option("out", "output directory (relative to the working directory); --out wins")
    inputs: InputsConfig = option(default_factory=InputsConfig)
    curate: CurateConfig = option(default_factory=CurateConfig)
    tokenize: TokenizeConfig = option(default_factory=TokenizeConfig)
    pretrain: PretrainConfig = option(default_factory=PretrainConfig)
    evaluate: EvaluateConfig = option(default_factory=EvaluateConfig)
    generate: GenerateConfig = option(default_factory=GenerateConfig)
    scaling: ScalingStageConfig = option(default_factory=ScalingStageConfig)
    finetune: FinetuneStageConfig = option(default_factory=FinetuneStageConfig)

    def validate(self) -> None:
        if not self.inputs.documents and not self.inputs.text:
            raise ConfigError("inputs: give inputs.documents or inputs.text (or both)")
        if self.finetune.enabled and not self.finetune.data_file:
            raise ConfigError("finetune.data_file: the finetune stage needs its data file")


# bundled experiments by name (`mlscale run NAME`): the files shipped in mlscale/experiments
BUNDLED_EXPERIMENTS = {"language": "default.toml", "vision": "vision.toml"}


def bundled_experiment(name: str = "language") -> Path:
    """An experiment file shipped in the package: `language` is what `mlscale run` runs
    with no argument, `vision` what `mlscale run vision` runs."""
    from importlib.resources import files

    return Path(str(files("mlscale").joinpath("experiments").joinpath(BUNDLED_EXPERIMENTS[name])))


def _experiment_file(path: str | Path | None) -> Path:
    """The file an EXPERIMENT argument names: a bundled experiment's name, or a path."""
    if path is None:
        return bundled_experiment()
    if str(path) in BUNDLED_EXPERIMENTS and not Path(path).exists():
        return bundled_experiment(str(path))
    if not Path(path).exists() and not str(path).endswith(".toml"):
        import difflib

        close = difflib.get_close_matches(str(path), list(BUNDLED_EXPERIMENTS), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"no experiment file {str(path)!r} and no bundled experiment of that name "
                          f"({hint}bundled: {', '.join(BUNDLED_EXPERIMENTS)})")
    return Path(path)


def _resolve(entry: str, base: Path) -> list[Path]:
    from mlscale.data import DATA_DIR, bundled_corpus

    if entry == BUNDLED_SAMPLE:
        return list(bundled_corpus())
    if entry == BUNDLED_SHAKESPEARE:
        return [DATA_DIR / "tinyshakespeare.txt.gz"]
    path = Path(entry).expanduser()
    return [path if path.is_absolute() else (base / path)]


def resolve_inputs(cfg: ExperimentConfig, base: Path, source: str) -> tuple[list[Path], list[Path]]:
    """The document and text paths, resolved against `base`; a missing one fails naming it."""
    out: list[list[Path]] = []
    for key, entries in (("documents", cfg.inputs.documents), ("text", cfg.inputs.text)):
        paths: list[Path] = []
        for entry in entries:
            for p in _resolve(entry, base):
                if not p.exists():
                    raise ConfigError(f"{source}: [inputs] {key}: {entry!r} not found ({p})")
                if key == "text" and not p.is_file():
                    raise ConfigError(f"{source}: [inputs] text: {entry!r} is not a file")
                paths.append(p.resolve())
        out.append(paths)
    return out[0], out[1]


def experiment_defaults() -> dict[str, Any]:
    """Every setting of an experiment at its default, as a dict (the finetune table at
    fine-tuning's own defaults, as `load_experiment` starts from)."""
    return to_dict(from_dict(ExperimentConfig, {"finetune": FINETUNE_DEFAULTS}))


def load_experiment(path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None
                    ) -> tuple[Any, Path, str]:
    """The experiment at `path` (a file, or a bundled experiment's name; the bundled
    language experiment when None) with overrides applied: an ExperimentConfig, or a
    VisionExperimentConfig when the file says `kind = "vision"`.

    Returns the config, the folder relative input paths are taken from, and the file's name
    for messages. Unknown tables or keys, wrong types and missing inputs fail here, before
    any stage starts, naming the file, table and key.
    """
    from mlscale.config import read_toml

    file = _experiment_file(path)
    if read_toml(file, "experiment file").get("kind") == "vision":
        from mlscale.experiment.vision_config import VisionExperimentConfig

        vision = load_config(VisionExperimentConfig, file, overrides, what="experiment file")
        return vision, file.resolve().parent, str(file)
    # the finetune table starts from fine-tuning's own defaults, as `mlscale finetune` does
    cfg = load_config(ExperimentConfig, file, overrides, base={"finetune": FINETUNE_DEFAULTS},
                      what="experiment file")
    base = file.resolve().parent
    if cfg.finetune.enabled:
        data = Path(cfg.finetune.data_file).expanduser()
        data = data if data.is_absolute() else base / data
        if not data.is_file():
            raise ConfigError(f"{file}: [finetune] data_file: {cfg.finetune.data_file!r} not found ({data})")
    return cfg, base, str(file)
