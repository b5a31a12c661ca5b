"""Loss, perplexity and bits per byte of a trained run, printed as JSON.

With no --data: the validation split of the token directory the run was trained on.
--data TOK: the validation split (or --split) of another token directory made with the
same tokenizer. --data FILE: a plain UTF-8 text file, encoded with the run's tokenizer.
Every token is scored once, in non-overlapping windows of the model's context length.

A self-supervised image run (simclr, dino, mae) prints the k-NN probe of its features;
--probe knn|linear probes the frozen features of any image run (see
mlscale.tasks.selfsup.evaluate).

A run of an image classifier (`mlscale train --task classify`) prints top-1, top-5 and
per-class accuracy and the confusion matrix on the val split (or --split) of the image
directory it was trained on, or of --data DIR, and writes RUN/report.html.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run directory of `mlscale pretrain`")
    parser.add_argument("--data", type=Path, metavar="TOK_OR_TEXT",
                        help="token directory or text file, or image directory for a classifier "
                        "(default: the run's own validation split)")
    parser.add_argument("--split", default="val", choices=("train", "val"),
                        help="split of a token directory (default: val)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--max-tokens", type=int, help="score only the first N tokens")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--probe", choices=("knn", "linear"),
                        help="an image run (self-supervised or classifier): probe its frozen features "
                        "instead; knn = weighted k-NN (k=20, T=0.07, cosine) with the train split as "
                        "bank, linear = BatchNorm + linear layer trained on the train split's features; "
                        "prints knn_top1 or linear_top1 on --split")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.errors import ConfigError

    if overrides:
        raise ConfigError(f"mlscale evaluate takes no config overrides (got {' '.join(overrides)})")
    selfsup = (Path(args.run_dir) / "selfsup.json").is_file()
    if args.probe or selfsup:
        from mlscale.tasks.selfsup.evaluate import evaluate_features

        result = evaluate_features(args.run_dir, args.data, args.probe or "knn", split=args.split, step=args.step,
                                   device=args.device)
        if selfsup:  # its run report: training curves, collapse watch, attention maps or reconstructions
            from mlscale.report.selfsup_report import write_selfsup_report

            print(f"report: {write_selfsup_report(args.run_dir, result, args.data)}", file=sys.stderr)
        print(json.dumps(result, indent=2))
        return 0
    result = evaluate_run(args.run_dir, args.data, split=args.split, step=args.step,
                          batch_size=args.batch_size, max_tokens=args.max_tokens, device=args.device)
    if "_predicted" in result:  # a classifier: its run report, from the per-image predictions
        from mlscale.report.classify_report import write_classify_report

        path = write_classify_report(args.run_dir, result, args.data)
        del result["_predicted"]
        print(f"report: {path}", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


def evaluate_run(run_dir: Path, data: Path | None = None, split: str = "val", step: int | None = None,
                 batch_size: int = 16, max_tokens: int | None = None, device: str = "cpu",
                 progress: bool = True) -> dict:
    """The figures `mlscale evaluate` prints, as a dict."""
    from mlscale.artifacts import fingerprint_file
    from mlscale.errors import ArtifactError, InputError
    from mlscale.evaluate.metrics import LossTotals, evaluate_tokens, summarize
    from mlscale.train.checkpoint import TOKENIZER, load_run, run_data_dir
    from mlscale.runtime.device import resolve_device
    from mlscale.tasks.lm import open_token_data

    from mlscale.train.task import task_owning_run

    owner = task_owning_run(run_dir)
    own = owner.evaluate_run(run_dir, data, split, step, device) if owner is not None else None
    if own is not None:  # e.g. a classifier: accuracy, not a language model's loss
        return own
    dev = resolve_device(device)
    loaded = load_run(run_dir, step=step, device=dev)
    seq_len = loaded.config.model.seq_len
    if data is None:
        data = run_data_dir(run_dir)
        if data is None:
            raise InputError(f"{run_dir} does not record its token directory; pass --data")
        if not data.exists():
            raise InputError(f"{run_dir} was trained on {data}, which no longer exists; pass --data")
    if data.is_dir():
        tokens_dir = open_token_data(data)
        if fingerprint_file(data / TOKENIZER) != fingerprint_file(Path(run_dir) / TOKENIZER):
            raise ArtifactError(f"{data} was made with another tokenizer than {run_dir}; "
                                "evaluate on a token directory of the run's tokenizer, or on a text file")
        tokens_dir.check_ids(split, loaded.config.model.vocab_size)
        tokens = tokens_dir.split(split)
        bpt = float(tokens_dir.bytes_per_token(split))
        source = {"data": str(data), "split": split}
    elif data.is_file():
        try:
            text = data.read_text("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{data} is not UTF-8 text ({e})") from None
        tokens = loaded.tokenizer.encode(text)
        bpt = len(text.encode("utf-8")) / len(tokens) if tokens else None
        source = {"data": str(data), "split": None}
    else:
        raise InputError(f"--data {data}: no such file or directory")
    if len(tokens) < 2:
        raise InputError(f"{data}: fewer than 2 tokens to evaluate")
    totals: LossTotals = evaluate_tokens(loaded.model, tokens, seq_len, batch_size=batch_size,
                                         device=dev, max_tokens=max_tokens, progress=progress)
    return {"run": str(run_dir), "step": loaded.step, **source, **summarize(totals, bpt)}
