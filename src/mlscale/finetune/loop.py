"""`finetune`: the sft or dpo task (cfg.objective) on a base model, through the one trainer.

The output directory is a run like pretraining's (see finetune/task.py for its files).
Rerunning with the same settings resumes an interrupted run from its latest checkpoint
(or does nothing when it finished); other settings on the same directory are refused
unless `force`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mlscale.finetune.config import FinetuneConfig
from mlscale.runtime import Runtime
from mlscale.train.loop import run_task


def finetune(cfg: FinetuneConfig, base_path: str | Path, data_path: str | Path, out_dir: str | Path,
             force: bool = False, runtime: Runtime | None = None) -> dict[str, Any]:
    """Fine-tune the model at `base_path` on `data_path`, writing the run to `out_dir`.

    Returns the summary also stored in FT/manifest.json.
    """
    return run_task(cfg.objective, cfg, data_path, out_dir, resume=not force, force=force,
                    base=base_path, runtime=runtime)
