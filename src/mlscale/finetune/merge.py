"""A fine-tuned run as an ordinary model: base + adapter merged, for evaluate, generate, export.

`load_finetuned(FT)` rebuilds exactly the model that was trained: it loads the base the
run records (refusing it if its files changed since), quantises it to NF4 again for a
QLoRA run (the quantisation is deterministic, so the adapter sees the base it was trained
on), applies the adapter and merges it into plain nn.Linear weights. The result is a
`LoadedRun`, like pretraining's, so every command that takes a run takes a fine-tuned one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mlscale.artifacts import read_json
from mlscale.config import from_dict
from mlscale.errors import ArtifactError, InputError
from mlscale.finetune.config import RUN_INFO
from mlscale.train.checkpoint import LoadedRun



@dataclass
class LoadedFinetune(LoadedRun):
    """A fine-tuned model ready for use, and the template its prompts are written in."""

    method: str = "lora"
    template: Any = None        # TemplateConfig
    renderer: Any = None        # TemplateRenderer

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of `prompt` wrapped in the training template, ready for the answer."""
        return self.renderer.prompt_ids(prompt)


def is_finetuned(run_dir: str | Path) -> bool:
    """True when `run_dir` is the output of `mlscale finetune`."""
    return (Path(run_dir) / RUN_INFO).is_file()


def _check_base(info: dict[str, Any], run_dir: Path) -> Path:
    base = info["base"]
    path = Path(base["path"])
    if not path.is_dir():
        raise InputError(f"{run_dir} was fine-tuned from {path}, which no longer exists; the "
                         "adapter needs its base model")
    return path


def load_finetuned(run_dir: str | Path, device: torch.device | str = "cpu",
                   merge: bool = True) -> LoadedFinetune:
    """The fine-tuned model of `run_dir` (eval mode, on `device`), with tokenizer and template.

    merge=False keeps the LoRA layers (adapter applied, not folded into the weights).
    """
    from mlscale.finetune.base import load_base
    from mlscale.finetune.config import TemplateConfig
    from mlscale.finetune.data import TemplateRenderer
    from mlscale.model.lora import load_adapter, merge_and_unload
    from mlscale.model.quant import quantize_linears
    from mlscale.train.checkpoint import load_weights
    from mlscale.train.config import PretrainConfig

    run_dir = Path(run_dir)
    if not is_finetuned(run_dir):
        raise InputError(f"{run_dir} is not a finished `mlscale finetune` run ({RUN_INFO} is missing)")
    info = read_json(run_dir / RUN_INFO)
    base_path = _check_base(info, run_dir)
    base = load_base(base_path, step=info["base"].get("step"))
    changed = [k for k, v in info["base"]["fingerprints"].items() if base.fingerprints.get(k) != v]
    if changed:
        raise ArtifactError(f"{run_dir}: its base {base_path} changed since fine-tuning "
                            f"({', '.join(changed)} differ); the adapter belongs to the old weights")
    model: nn.Module = base.model
    method = info["method"]
    if method == "full":
        load_weights(model, run_dir / info["weights"])
    else:
        if method == "qlora":
            quantize_linears(model, [n for n, m in model.named_modules()
                                     if isinstance(m, nn.Linear) and n.startswith("blocks.")])
        load_adapter(model, run_dir / info["adapter"])
        if merge:
            merge_and_unload(model)
    template = from_dict(TemplateConfig, info["template"])
    model.to(device).eval()
    return LoadedFinetune(model=model, config=PretrainConfig(model=base.model_config),
                          tokenizer=base.tokenizer, step=int(info["steps"]),
                          path=run_dir, run_dir=run_dir, method=method, template=template,
                          renderer=TemplateRenderer(template, base.tokenizer))


def merge_into_base(run_dir: str | Path, device: torch.device | str = "cpu") -> LoadedFinetune:
    """The fine-tuned run with its adapter merged into plain weights (what `export --merge` writes).

    Wire-up in export/command.py:  `loaded = merge_into_base(run) if args.merge else load_run(run)`
    then `export_hf(loaded.model, out, loaded.run_dir / "tokenizer.json")`.
    """
    return load_finetuned(run_dir, device=device, merge=True)
