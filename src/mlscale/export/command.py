"""Write a trained run as a Hugging Face model directory.

    mlscale export RUN --format hf --out DIR [--step N] [--dtype fp32|bf16|fp16] [--merge] [--force]

DIR gets config.json, generation_config.json, model.safetensors and the tokenizer files;
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads it as a LlamaForCausalLM
and `AutoTokenizer.from_pretrained(DIR)` its tokenizer, offline. A LoRA/QLoRA fine-tuned
run (`mlscale finetune`) is exported with --merge: the adapter is folded into the weights.
Exporting again with the same run and options is a no-op; another checkpoint or options
on the same DIR is refused (use --force, or another --out).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mlscale.errors import ConfigError, check_dir

FORMATS = ("hf",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory (mlscale pretrain or finetune --out)")
    parser.add_argument("--format", default="hf", choices=FORMATS,
                        help="output format: hf = a transformers LlamaForCausalLM directory (an image "
                        "classifier: ViTForImageClassification with its image processor)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step to export (default: the latest)")
    parser.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"),
                        help="dtype of the written weights (default: as trained, fp32)")
    parser.add_argument("--merge", action="store_true",
                        help="fine-tuned runs: merge the LoRA adapter into the base weights")
    parser.add_argument("--force", action="store_true", help="delete DIR and export again")


def _load(run: Path, step: int | None, merge: bool):
    """The run's model and tokenizer path: a pretraining run, or a fine-tuned one merged."""
    from mlscale.finetune.merge import is_finetuned, merge_into_base

    if is_finetuned(run):
        if not merge:
            raise ConfigError(f"{run} is a fine-tuned run: add --merge to fold its adapter "
                              "into the base weights")
        if step is not None:
            raise ConfigError("--step applies to pretraining runs; a fine-tuned run exports its final weights")
        return merge_into_base(run)
    if merge:
        raise ConfigError(f"--merge applies to fine-tuned runs (mlscale finetune --out); {run} is "
                          "a pretraining run: export it without --merge")
    from mlscale.train.checkpoint import load_run

    return load_run(run, step=step)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.artifacts import StageDir, fingerprint_paths
    from mlscale.export.hf import export_hf

    if overrides:
        raise ConfigError(f"mlscale export takes no config overrides, got {' '.join(overrides)}")
    run_dir = check_dir(args.run, "run directory", "give the --out directory of `mlscale pretrain` "
                        "or `mlscale finetune`")
    loaded = _load(run_dir, args.step, args.merge)
    if getattr(loaded, "classes", None) is not None:  # an image classifier
        return _export_classifier(loaded, run_dir, args)
    tokenizer_file = loaded.run_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        tokenizer_file = Path(loaded.tokenizer.path)
    config = {"format": args.format, "run": str(run_dir.resolve()), "step": loaded.step,
              "merge": args.merge, "dtype": args.dtype}
    inputs = fingerprint_paths([loaded.path, tokenizer_file])
    stage = StageDir.open(args.out, "export", config, inputs, force=args.force)
    if stage.complete:
        print(f"{args.out} already holds this export (step {loaded.step}); nothing to do")
        return 0
    files = export_hf(loaded.model, Path(args.out), tokenizer_file, dtype=args.dtype)
    stage.write_manifest({
        "format": args.format,
        "step": loaded.step,
        "num_params": loaded.model.num_params(),
        "files": [f.name for f in files],
    })
    print(f"exported {run_dir} (step {loaded.step}, {loaded.model.num_params():,} parameters) "
          f"to {args.out} as a Hugging Face LlamaForCausalLM")
    return 0


def _export_classifier(loaded, run_dir: Path, args: argparse.Namespace) -> int:
    """A ViT classifier as a transformers ViTForImageClassification directory with its image
    processor (the run's normalisation and class names): `pipeline("image-classification",
    model=DIR)` labels images of the dataset."""
    from mlscale.artifacts import StageDir, fingerprint_paths
    from mlscale.export.hf import DTYPES
    from mlscale.model.registry import family_of

    family = family_of(loaded.config.model)
    if family.hf is None or not hasattr(family.hf, "save_hf"):
        raise ConfigError(f"model family '{family.name}' has no Hugging Face image-classification export")
    config = {"format": args.format, "run": str(run_dir.resolve()), "step": loaded.step, "dtype": args.dtype}
    stage = StageDir.open(args.out, "export", config, fingerprint_paths([loaded.path]), force=args.force)
    if stage.complete:
        print(f"{args.out} already holds this export (step {loaded.step}); nothing to do")
        return 0
    pre = loaded.preprocess
    files = family.hf.save_hf(loaded.model, Path(args.out), loaded.classes, image_mean=pre["mean"],
                              image_std=pre["std"], dtype=DTYPES[args.dtype] if args.dtype else None)
    stage.write_manifest({"format": args.format, "step": loaded.step, "num_params": loaded.model.num_params(),
                          "files": [f.name for f in files]})
    print(f"wrote {args.out}: a ViTForImageClassification directory with its image processor")
    return 0
