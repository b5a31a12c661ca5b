"""IsoFLOP sweeps: for each compute budget C, several model sizes trained on C FLOPs each.

For a budget C the sizes come from the depth preset (LlamaConfig.depth: n_layer = depth,
width 64 * depth). The window of `sizes` consecutive depths is centred, in log N, on a
prior guess of the compute-optimal size, N ~ sqrt(C / (6 R)) with R tokens per parameter
(Chinchilla: R ~ 20), so each profile brackets its minimum. Every run trains on
D = C / flops_per_token tokens, counted with the model's own `flops_per_token` (6N plus
attention), hence max_steps = D / tokens_per_step, with a cosine schedule that reaches
min_lr at its last step: each run is a finished training run at its budget, not a
truncated longer one (Hoffmann et al. 2022, section 3.1).

    SWEEP/stage.json, SWEEP/manifest.json     the sweep's start record and completion
    SWEEP/runs/C<budget>-d<depth>/            one pretrain run directory per (budget, depth)
    SWEEP/runs.csv                            N, D, C, loss (final val) and the run directory

A finished run is skipped (its work-unit marker holds its row); an interrupted one resumes
from its latest checkpoint; runs.csv is rewritten after every run so a partial sweep can
already be fitted with `mlscale scaling fit SWEEP/runs.csv`.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlscale.artifacts import StageDir, atomic_write_text, fingerprint_file
from mlscale.config import load_config, to_dict
from mlscale.errors import ConfigError, InputError
from mlscale.train.config import PretrainConfig

MAX_DEPTH = 64
FEW_STEPS = 20  # below this a run's final loss is mostly noise: say so
COLUMNS = ("N", "D", "C", "loss", "budget", "depth", "n_layer", "d_model", "non_embedding_params",
           "flops_per_token", "steps", "tokens_per_step", "train_loss", "seconds", "run")


@dataclass
class SweepRun:
    """One (budget, depth) run of the sweep, fully specified before it trains."""

    name: str
    budget: float
    depth: int
    params: int
    non_embedding_params: int
    flops_per_token: float
    steps: int
    tokens_per_step: int
    cfg: PretrainConfig

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def compute(self) -> float:
        return self.tokens * self.flops_per_token


def depth_config(base: PretrainConfig, depth: int, vocab_size: int) -> PretrainConfig:
    """`base` with the model resized by the depth preset and the vocabulary filled in."""
    cfg = copy.deepcopy(base)
    cfg.model.depth = depth
    cfg.model.vocab_size = vocab_size
    cfg.model.validate()  # applies the preset
    return cfg


def model_size(cfg: PretrainConfig) -> tuple[int, int, float]:
    """(parameters, non-embedding parameters, training FLOPs per token) of cfg.model, without allocating it."""
    import torch

    from mlscale.model.registry import family_of

    family = family_of(cfg.model)
    with torch.device("meta"):  # shapes only: no memory, no init
        model = family.build(cfg.model)
    return (model.num_params(), model.num_params(non_embedding=True),
            float(family.flops_per_sample(cfg.model, model)))


def choose_depths(sizes_by_depth: dict[int, int], budget: float, count: int, tokens_per_param: float) -> list[int]:
    """`count` consecutive depths whose log N is centred on the prior optimum sqrt(C / (6 R))."""
    depths = sorted(sizes_by_depth)
    if count > len(depths):
        raise ConfigError(f"--sizes {count} is more than the {len(depths)} depths available")
    target = 0.5 * math.log(budget / (6.0 * tokens_per_param))
    best = min(range(len(depths) - count + 1),
               key=lambda i: abs(sum(math.log(sizes_by_depth[d]) for d in depths[i:i + count]) / count - target))
    return depths[best:best + count]


def plan_runs(base: PretrainConfig, vocab_size: int, budgets: list[float], sizes: int,
              tokens_per_param: float) -> list[SweepRun]:
    """Every run of the sweep: depths per budget, step counts from the models' own FLOP counts."""
    if sizes < 2:
        raise ConfigError(f"--sizes {sizes}: an IsoFLOP profile needs several sizes (3 or more for a parabola)")
    t = base.train
    tokens_per_step = t.batch_size * t.grad_accum * base.model.seq_len
    # size depths upward until they are far past every budget's prior optimum (building a
    # model, even on the meta device, takes a while at large depths)
    largest_target = math.sqrt(max(budgets) / (6.0 * tokens_per_param))
    shapes: dict[int, tuple[int, int, float]] = {}
    for d in range(1, MAX_DEPTH + 1):
        shapes[d] = model_size(depth_config(base, d, vocab_size))
        if d >= sizes and shapes[d][0] > 100 * largest_target:
            break
    runs = []
    for budget in sorted(budgets):
        for depth in choose_depths({d: s[0] for d, s in shapes.items()}, budget, sizes, tokens_per_param):
            params, non_emb, fpt = shapes[depth]
            steps = round(budget / (fpt * tokens_per_step))
            if steps < 1:
                raise ConfigError(
                    f"budget {budget:.3g} FLOPs is less than one step of depth {depth} ({params / 1e6:.2f}M "
                    f"parameters, {tokens_per_step} tokens/step); raise the budget or lower train.batch_size")
            if steps < FEW_STEPS:
                print(f"warning: budget {budget:.3g} gives depth {depth} only {steps} steps; its loss will be noisy")
            cfg = depth_config(base, depth, vocab_size)
            tc = cfg.train
            tc.max_steps = steps
            tc.schedule = "cosine"  # decays to min_lr exactly at this run's last step
            tc.warmup_steps = min(tc.warmup_steps, steps // 10)
            tc.eval_every = 0  # only the final val loss is fitted (raise train.eval_batches to steady it)
            tc.log_every = max(tc.log_every, steps // 20)
            cfg.validate()
            runs.append(SweepRun(name=f"C{budget:.3g}-d{depth}", budget=budget, depth=depth, params=params,
                                 non_embedding_params=non_emb, flops_per_token=fpt, steps=steps,
                                 tokens_per_step=tokens_per_step, cfg=cfg))
    return runs


def _row(run: SweepRun, summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    loss = summary.get("final_val_loss")
    if loss is None:
        raise InputError(f"{run_dir}: no validation loss (the val split is shorter than model.seq_len + 1); "
                         "a sweep fits the val loss, so tokenize with a validation split")
    return {"N": run.params, "D": run.tokens, "C": run.compute, "loss": loss, "budget": run.budget,
            "depth": run.depth, "n_layer": run.cfg.model.n_layer, "d_model": run.cfg.model.d_model,
            "non_embedding_params": run.non_embedding_params, "flops_per_token": run.flops_per_token,
            "steps": run.steps, "tokens_per_step": run.tokens_per_step,
            "train_loss": summary.get("final_train_loss"), "seconds": summary.get("seconds"), "run": str(run_dir)}


def write_runs_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def sweep(base: PretrainConfig, data_dir: str | Path, out_dir: str | Path, budgets: list[float], *,
          sizes: int = 4, tokens_per_param: float = 20.0, force: bool = False) -> dict[str, Any]:
    """Train the IsoFLOP profiles; returns the manifest body (rows of runs.csv under 'runs')."""
    from mlscale.tokenize.tokenizer import load_tokenizer
    from mlscale.tasks.lm import open_token_data
    from mlscale.train.loop import pretrain

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    open_token_data(data_dir)  # clear errors for a missing or unfinished token directory
    vocab_size = load_tokenizer(data_dir / "tokenizer.json").vocab_size
    runs = plan_runs(base, vocab_size, budgets, sizes, tokens_per_param)
    config = {"budgets": sorted(budgets), "sizes": sizes, "tokens_per_param": tokens_per_param,
              "base": to_dict(base)}
    stage = StageDir.open(out_dir, "scaling-sweep", config,
                          {"tokens": fingerprint_file(data_dir / "manifest.json")}, force=force)
    if stage.complete:
        print(f"{out_dir} is a finished sweep; nothing to do (fit it: mlscale scaling fit {out_dir / 'runs.csv'})")
        return stage.manifest()
    rows = []
    for i, run in enumerate(runs, start=1):
        run_dir = out_dir / "runs" / run.name
        if stage.unit_done(run.name):
            rows.append(stage.unit_payload(run.name))
            print(f"[{i}/{len(runs)}] {run.name}: done (loss {rows[-1]['loss']:.4f}), skipped")
            continue
        print(f"[{i}/{len(runs)}] {run.name}: depth {run.depth}, {run.params / 1e6:.3f}M parameters, "
              f"{run.steps} steps, D={run.tokens:.3g} tokens, C={run.compute:.3g} FLOPs", flush=True)
        summary = pretrain(run.cfg, data_dir, run_dir, resume=True)
        row = _row(run, summary, run_dir)
        stage.mark_done(run.name, row)
        rows.append(row)
        write_runs_csv(out_dir / "runs.csv", rows)
    write_runs_csv(out_dir / "runs.csv", rows)
    manifest = stage.write_manifest({"runs": rows, "table": str(out_dir / "runs.csv")})
    print(f"sweep finished: {len(rows)} runs in {out_dir / 'runs.csv'}; "
          f"fit it with: mlscale scaling fit {out_dir / 'runs.csv'} --out {out_dir / 'fit'}")
    return manifest


def sweep_from_cli(args: argparse.Namespace, overrides: list[str]) -> int:
    """`mlscale scaling sweep`: the base pretrain config from --config and overrides, then `sweep`."""
    base = load_config(PretrainConfig, args.config, overrides)
    if base.model.depth:
        raise ConfigError("model.depth is chosen per run by the sweep; leave it unset (0)")
    if args.tokens_per_param <= 0:
        raise ConfigError(f"--tokens-per-param must be positive, got {args.tokens_per_param}")
    sweep(base, args.data, args.out, args.budgets, sizes=args.sizes, tokens_per_param=args.tokens_per_param,
          force=args.force)
    return 0
