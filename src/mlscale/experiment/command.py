"""Run the whole chain from one experiment file: curate, tokenize, pretrain, evaluate and
generate (a vision experiment: images, train, evaluate), each into OUT/<stage>/, then
OUT/report.html.

With no EXPERIMENT: the bundled language experiment (real web pages from the bundled
sample plus tiny Shakespeare, a small character-level model), a few minutes on a laptop
CPU. `mlscale run vision`: the bundled vision experiment (a small vision transformer on
the bundled Fashion-MNIST subset).

A stage whose config and inputs are unchanged is skipped (up to date); a changed key
reruns that stage and those after it, nothing before. For pretrain, a larger
train.max_steps continues from the latest checkpoint. Interrupt it anywhere and run the
same command again: it resumes inside the interrupted stage.
"""
from __future__ import annotations

import argparse

EPILOG = """\
examples:
  mlscale run                                         # the bundled experiment -> ./out
  mlscale run vision                                  # the bundled vision experiment -> ./out-vision
  mlscale run vision --train.train.max_steps=1200     # train it longer: resumes train
  mlscale run --dry-run                               # what would run, and why
  mlscale run --pretrain.train.max_steps=3000         # train longer: resumes pretrain
  mlscale run my-experiment.toml --out runs/exp1
  mlscale run --from pretrain                         # retrain (and re-evaluate)

The experiment file has one table per stage ([curate], [tokenize], [pretrain], [evaluate],
[generate]) with the keys of that stage's own command, plus [inputs]; see the bundled one:
  python -c "import mlscale.experiment.config as c; print(c.bundled_experiment().read_text())"
A vision experiment file says kind = "vision" and has [inputs] images, [images], [train]
(the keys of `mlscale train --task classify`) and [evaluate]:
  python -c "import mlscale.experiment.config as c; print(c.bundled_experiment('vision').read_text())"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mlscale.experiment.plan import STAGES, VISION_STAGES

    stages = [*STAGES, *(s for s in VISION_STAGES if s not in STAGES)]
    parser.epilog = EPILOG
    parser.add_argument("experiment", nargs="?", metavar="EXPERIMENT",
                        help="experiment file, or a bundled experiment's name: language (the default) "
                             "or vision")
    parser.add_argument("--out", metavar="DIR",
                        help="output directory (default: the experiment's `out`, ./out)")
    parser.add_argument("--from", dest="from_stage", choices=stages, metavar="STAGE",
                        help=f"rerun STAGE and every stage after it ({', '.join(stages)})")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (what is up to date, what runs and why) and stop")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.experiment.config import load_experiment
    from mlscale.experiment.runner import run_experiment

    cfg, base, source = load_experiment(args.experiment, overrides)
    run_experiment(cfg, args.out or cfg.out, from_stage=args.from_stage, dry_run=args.dry_run,
                   base=base, source=source)
    return 0
