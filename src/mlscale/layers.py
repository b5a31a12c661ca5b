"""The layers of mlscale, lowest first: imports run downwards only.

Every package (or top-level module) under `mlscale` belongs to exactly one layer. A module
may import from its own package, from any lower layer, and from another package of its
own layer only where `SIDEWAYS` names the pair (with the reason the design needs it).
Nothing imports upwards, and no two modules import each other, directly or round a
circle. `tests/test_layering.py` walks every import of the package (those inside
functions included) and fails on a circle, on an upward or unlisted sideways import, on
a file over `MAX_FILE_LINES` lines and on a function over `MAX_FUNCTION_LINES` lines.

    ground floor   mlscale itself, config, artifacts, errors, executors (local processes
                   and Ray, for every data stage), runtime (device, ranks), html (report
                   building blocks), reference, layers, data (bundled data), registry
                   (name -> implementation tables that configs select from)
    data, models   curate, images, tokenize, model
    trainer        train (the loop, its configs, checkpoints and the task interface)
    tasks          tasks (what is learnt from a batch: they fill in train's interface;
                   the trainer finds them by name, never by import)
    uses of runs   finetune (its tasks, adapters and data formats), evaluate, export,
                   scaling, report
    experiment     experiment (`mlscale run`)
    command line   cli, __main__

A new package goes into one layer here; the test fails on a package that has none.
"""
from __future__ import annotations

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground floor", ("", "config", "artifacts", "errors", "executors", "runtime", "html",
                      "reference", "layers", "data", "registry")),
    ("data stages and models", ("curate", "images", "tokenize", "model")),
    ("trainer", ("train",)),
    ("tasks", ("tasks",)),
    ("fine-tuning, evaluation, export, scaling, reports",
     ("finetune", "evaluate", "export", "scaling", "report")),
    ("experiment", ("experiment",)),
    ("command line", ("cli", "__main__")),
)
"""(layer name, packages) from the lowest layer up; "" is the `mlscale` package itself."""

SIDEWAYS: dict[tuple[str, str], str] = {
    ("__main__", "cli"): "`python -m mlscale` is the `mlscale` command",
    ("export", "finetune"): "export writes a LoRA run merged into its base model",
    ("evaluate", "report"): "`mlscale evaluate` of a classifier writes its run report",
}
"""(importer, imported) packages of one layer that may import each other, and why.

The ground floor needs no entry: everything may use it, itself included."""

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def layer_of(package: str) -> int | None:
    """Index in `LAYERS` of `package` (the name after `mlscale.`), or None if unplaced."""
    for i, (_, packages) in enumerate(LAYERS):
        if package in packages:
            return i
    return None
