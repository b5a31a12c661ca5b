"""The language experiment (`mlscale run`): curate -> tokenize -> pretrain -> evaluate ->
generate, with the optional scaling and finetune stages.

Each stage is the code of its own command, writing OUT/<stage>/; see runner.py for what
lies between them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mlscale.artifacts import fingerprint_paths
from mlscale.config import to_dict
from mlscale.experiment.config import ExperimentConfig, experiment_defaults, resolve_inputs
from mlscale.experiment.plan import STAGES, RunState
from mlscale.experiment.stages import ExperimentStages

INPUTS_DIR = "inputs"


class LanguageExperiment(ExperimentStages):
    """The language experiment's stages: their configs, inputs and how to run each."""

    def __init__(self, cfg: ExperimentConfig, out: Path, base: Path, source: str):
        super().__init__(cfg, out)
        self.documents, self.texts = resolve_inputs(cfg, base, source)
        self.finetune_data = (base / cfg.finetune.data_file).resolve() if cfg.finetune.enabled else None
        optional = {"curate": bool(self.documents), "scaling": cfg.scaling.enabled,
                    "finetune": cfg.finetune.enabled}
        self.stages = [s for s in STAGES if optional.get(s, True)]

    # -- what each stage is keyed by ----------------------------------------------------
    def config(self, stage: str) -> dict[str, Any]:
        c = self.cfg
        if stage == "curate":
            return c.curate.identity()
        if stage == "tokenize":
            return {**c.tokenize.content_dict(), "passage_chars": c.inputs.passage_chars}
        if stage == "scaling":  # the sweep's runs start from the pretrain settings
            return {**to_dict(c.scaling), "pretrain": to_dict(c.pretrain)}
        return to_dict(getattr(c, stage))

    def inputs(self, stage: str, state: RunState) -> dict[str, Any] | None:
        """Fingerprints of what the stage reads; None while an upstream output is unknown."""
        if stage == "curate":
            return {"documents": fingerprint_paths(self.documents)}
        upstream = {"tokenize": "curate", "pretrain": "tokenize", "evaluate": "pretrain",
                    "generate": "pretrain", "scaling": "tokenize", "finetune": "pretrain"}[stage]
        found: dict[str, Any] = {}
        if stage == "finetune":
            found["data"] = fingerprint_paths([self.finetune_data])
        if stage == "tokenize":
            found["text"] = fingerprint_paths(self.texts)
            if "curate" not in self.stages:
                return found
        fp = state.output(upstream)
        if fp is None:
            return None
        found[upstream] = fp
        return found

    # -- running ------------------------------------------------------------------------
    def _curate(self, mode: str) -> None:
        from mlscale.curate.pipeline import curate
        from mlscale.curate.report import summary_lines

        manifest = curate(self.documents, self.out / "curate", self.cfg.curate, force=mode == "restart")
        print("\n".join(summary_lines(manifest, self.out / "curate")), flush=True)

    def _tokenize(self, mode: str) -> None:
        from mlscale.experiment.passages import write_passages
        from mlscale.tokenize.stage import tokenize_corpus

        inputs: list[Path] = [self.out / "curate"] if "curate" in self.stages else []
        for i, text in enumerate(self.texts):
            dest = self.out / INPUTS_DIR / f"{i:02d}-{text.name.removesuffix('.gz').removesuffix('.txt')}.jsonl.gz"
            n = write_passages(text, dest, self.cfg.inputs.passage_chars)
            print(f"{text.name}: {n:,} passages of ~{self.cfg.inputs.passage_chars:,} characters -> {dest}")
            inputs.append(dest)
        m = tokenize_corpus(inputs, self.out / "tokenize", self.cfg.tokenize, force=mode == "restart")
        for name, s in m["splits"].items():
            print(f"{name:>5}: {s['tokens']:,} tokens from {s['documents']:,} documents "
                  f"({s['bytes']:,} bytes)", flush=True)

    def _pretrain(self, mode: str) -> None:
        from mlscale.train.loop import pretrain

        summary = pretrain(self.cfg.pretrain, self.out / "tokenize", self.out / "pretrain",
                           resume=mode in ("resume", "extend"), force=mode == "restart")
        print(f"pretrain: {summary['steps']} steps, final val loss {summary['final_val_loss']}", flush=True)

    def _scaling(self, mode: str) -> None:
        from mlscale.scaling.analyze import fit_file
        from mlscale.scaling.sweep import sweep

        c = self.cfg.scaling
        sweep(self.cfg.pretrain, self.out / "tokenize", self.out / "scaling", c.budgets,
              sizes=c.sizes, tokens_per_param=c.tokens_per_param, force=mode == "restart")
        body = fit_file(self.out / "scaling" / "runs.csv", law=c.law, bootstrap=c.bootstrap,
                        out=self.out / "scaling" / "fit", progress=True)
        shown = {k: body[k] for k in ("E", "A", "B", "alpha", "beta", "a", "b") if k in body}
        print("scaling fit: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()), flush=True)

    def _finetune(self, mode: str) -> None:
        from mlscale.finetune.loop import finetune

        from mlscale.config import from_dict
        from mlscale.finetune.config import FinetuneConfig

        # the stage's own keys (enabled, data_file) are the experiment's, not the run's
        keys = {k: v for k, v in to_dict(self.cfg.finetune).items() if k not in ("enabled", "data_file")}
        summary = finetune(from_dict(FinetuneConfig, keys), self.out / "pretrain", self.finetune_data,
                           self.out / "finetune", force=mode == "restart")
        shown = {k: v for k, v in summary.items() if isinstance(v, float) and "loss" in k}
        print("finetune: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), flush=True)

    def _evaluate(self, mode: str) -> None:
        from mlscale.artifacts import atomic_write_json
        from mlscale.evaluate.command import evaluate_run

        e = self.cfg.evaluate
        sd = self.open_stage_dir("evaluate", to_dict(e), "pretrain", mode)
        if sd.complete:
            return
        result = evaluate_run(self.out / "pretrain", self.out / "tokenize", split=e.split,
                              batch_size=e.batch_size, max_tokens=e.max_tokens or None, device=e.device)
        atomic_write_json(sd.path / "metrics.json", result)
        sd.write_manifest({"metrics": result})
        shown = {k: v for k, v in result.items() if isinstance(v, float)}
        print("evaluate: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), flush=True)

    def _generate(self, mode: str) -> None:
        from mlscale.artifacts import atomic_write_json, atomic_write_text
        from mlscale.evaluate.generate_command import generate_text

        g = self.cfg.generate
        sd = self.open_stage_dir("generate", to_dict(g), "pretrain", mode)
        if sd.complete:
            return
        for i, prompt in enumerate(g.prompts):
            unit = f"prompt-{i:03d}"
            if sd.unit_done(unit):
                continue
            texts = generate_text(self.out / "pretrain", prompt, max_new_tokens=g.max_new_tokens,
                                  temperature=g.temperature, top_k=g.top_k or None,
                                  top_p=g.top_p if g.top_p < 1 else None, seed=g.seed + i,
                                  num_samples=g.num_samples, device=g.device)
            sd.mark_done(unit, {"prompt": prompt, "samples": texts})
            for t in texts:
                print(f"--- {prompt!r}\n{t}", flush=True)
        samples = [sd.unit_payload(f"prompt-{i:03d}") for i in range(len(g.prompts))]
        atomic_write_json(sd.path / "samples.json", samples)
        atomic_write_text(sd.path / "samples.txt", "\n\n".join(
            f"=== {s['prompt']!r} ({k + 1}/{len(s['samples'])})\n{t}"
            for s in samples for k, t in enumerate(s["samples"])) + "\n")
        sd.write_manifest({"samples": samples})

    def write_report(self) -> None:
        from mlscale.report.run_report import write_run_report

        write_run_report(self.out, self.cfg, self.stages, experiment_defaults())
