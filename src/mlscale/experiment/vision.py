"""The vision experiment (`mlscale run vision`): images -> train -> evaluate, and a report.

    OUT/images/     `mlscale images` of the inputs (the bundled Fashion-MNIST subset)
    OUT/train/      `mlscale train --task classify` on them
    OUT/evaluate/   `mlscale evaluate`: metrics.json (top-1, top-5, per class, confusion)
    OUT/report.html the classifier's report (curves, confusion matrix, worst-confused
                    pairs with their images) with the data and the stages' times

Each stage is the code of its own command; see runner.py for what lies between them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mlscale.artifacts import atomic_write_json, fingerprint_paths, read_json
from mlscale.config import to_dict
from mlscale.experiment.plan import VISION_STAGES, RunState
from mlscale.experiment.stages import REPORT, ExperimentStages
from mlscale.experiment.vision_config import VisionExperimentConfig, resolve_image_inputs

PREDICTIONS = "predictions.json"


class VisionExperiment(ExperimentStages):
    """The vision experiment's stages: their configs, inputs and how to run each."""

    def __init__(self, cfg: VisionExperimentConfig, out: Path, base: Path, source: str):
        super().__init__(cfg, out)
        self.image_inputs = resolve_image_inputs(cfg, base, source)
        self.stages = list(VISION_STAGES)

    def config(self, stage: str) -> dict[str, Any]:
        if stage == "images":
            return self.cfg.images.identity()
        return to_dict(getattr(self.cfg, stage))

    def inputs(self, stage: str, state: RunState) -> dict[str, Any] | None:
        if stage == "images":
            return {"images": fingerprint_paths(self.image_inputs)}
        return self.upstream_inputs(stage, {"train": "images", "evaluate": "train"}[stage], state)

    # -- running ------------------------------------------------------------------------
    def _images(self, mode: str) -> None:
        from mlscale.images.stage import build_images

        m = build_images(self.image_inputs, self.out / "images", self.cfg.images, force=mode == "restart")
        c = m["counts"]
        removed = ", ".join(f"{n:,} {r}" for r, n in sorted(c["removed"].items())) or "none"
        splits = ", ".join(f"{name} {s['images']:,}" for name, s in m["splits"].items())
        print(f"images: {c['read']:,} read, {c['kept']:,} kept ({splits}), removed: {removed}", flush=True)

    def _train(self, mode: str) -> None:
        from mlscale.train.loop import run_task

        summary = run_task("classify", self.cfg.train, self.out / "images", self.out / "train",
                           resume=mode in ("resume", "extend"), force=mode == "restart")
        shown = {k: summary[k] for k in ("final_top1", "final_top5") if isinstance(summary.get(k), float)}
        print(f"train: {summary['steps']} steps" + "".join(f", {k} {v:.4f}" for k, v in shown.items()),
              flush=True)

    def _evaluate(self, mode: str) -> None:
        from mlscale.report.classify_report import PREDICTED, write_classify_report
        from mlscale.tasks.classify import evaluate_classifier

        e = self.cfg.evaluate
        sd = self.open_stage_dir("evaluate", to_dict(e), "train", mode)
        if sd.complete:
            return
        result = evaluate_classifier(self.out / "train", self.out / "images", split=e.split, device=e.device)
        write_classify_report(self.out / "train", result, self.out / "images")
        atomic_write_json(sd.path / PREDICTIONS, result.pop(PREDICTED))
        atomic_write_json(sd.path / "metrics.json", result)
        sd.write_manifest({"metrics": {k: result[k] for k in ("top1", "top5", "loss", "images", "step")}})
        print(f"evaluate ({e.split}, {result['images']:,} images): top1 {result['top1']:.4f}, "
              f"top5 {result['top5']:.4f}", flush=True)

    def write_report(self) -> None:
        from mlscale.artifacts import atomic_write_text
        from mlscale.report.classify_report import PREDICTED, build_classify_report

        result = read_json(self.out / "evaluate" / "metrics.json")
        result[PREDICTED] = read_json(self.out / "evaluate" / PREDICTIONS)
        html = build_classify_report(self.out / "train", result, self.out / "images",
                                     title=f"mlscale run: {self.cfg.name}",
                                     before=[("Stages", self._stages_section())])
        atomic_write_text(self.out / REPORT, html)

    def _stages_section(self) -> str:
        from mlscale.html import escape, table

        state = RunState(self.out)
        rows = [[stage, state.record(stage).get("done", {}).get("seconds", "n/a")] for stage in self.stages]
        counts = read_json(self.out / "images" / "manifest.json").get("counts", {})
        links = ", ".join(f'<a href="{s}/report.html">{s}/report.html</a>' for s in self.stages
                          if (self.out / s / "report.html").is_file())
        return (f"<p>{counts.get('read', 0):,} images read from "
                f"{escape(', '.join(str(p) for p in self.image_inputs))}, {counts.get('kept', 0):,} kept. "
                f"The stages' own reports: {links}.</p>" + table(["stage", "seconds"], rows))
