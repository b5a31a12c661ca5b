"""`mlscale run vision` end to end on the bundled Fashion-MNIST subset with a tiny model:
every stage, then up to date, then a longer train that continues from its checkpoint and
reruns train and evaluate only; a misspelt experiment name suggests the bundled one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mlscale.cli import main
from mlscale.errors import ConfigError
from mlscale.experiment.config import bundled_experiment, load_experiment
from mlscale.experiment.vision_config import VisionExperimentConfig

STAGES = ["images", "train", "evaluate"]
# the bundled file's keys, shrunk to seconds: a 1-block ViT on its conv stem, 60 steps of 32 images
TINY = ["--train.model.stem_width=16", "--train.model.d_model=48", "--train.model.n_layer=1",
        "--train.model.n_head=2", "--train.train.batch_size=32", "--train.train.max_steps=60",
        "--train.train.warmup_steps=5", "--train.train.eval_every=30", "--train.train.eval_batches=2",
        "--train.train.checkpoint_every=30", "--train.train.log_every=10", "--train.train.threads=1"]


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled vision experiment, shrunk, run once: its output dir."""
    out = tmp_path_factory.mktemp("vision-run") / "out"
    assert main(["run", "vision", "--out", str(out), *TINY]) == 0
    return out


def _mtimes(out: Path, stage: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (out / stage).rglob("*") if p.is_file()}


def test_bundled_vision_experiment_is_a_vision_config() -> None:
    cfg, _, source = load_experiment("vision")
    assert isinstance(cfg, VisionExperimentConfig) and source == str(bundled_experiment("vision"))
    assert cfg.train.model.family == "vit" and cfg.train.model.stem == "conv"
    assert cfg.inputs.images == ["@fashion-mnist"] and cfg.out == "out-vision"


def test_vision_experiment_runs_every_stage(vision_run: Path) -> None:
    out = vision_run
    state = json.loads((out / "run-state.json").read_text())
    assert list(state["stages"]) == STAGES
    images = json.loads((out / "images" / "manifest.json").read_text())
    assert images["splits"]["train"]["images"] > 2500 and images["splits"]["val"]["images"] > 900
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert metrics["step"] == 60 and metrics["images"] == images["splits"]["val"]["images"]
    assert metrics["top1"] > 0.25  # learnt (0.33 here): chance is 0.1 on 10 balanced classes
    assert len(metrics["per_class"]) == 10
    predictions = json.loads((out / "evaluate" / "predictions.json").read_text())
    assert len(predictions) == metrics["images"]
    html = (out / "report.html").read_text()
    assert "Stages" in html and "Confusion" in html and "data:image/png;base64," in html


def test_vision_experiment_rerun_is_up_to_date(vision_run: Path, capsys: pytest.CaptureFixture) -> None:
    before = {s: _mtimes(vision_run, s) for s in STAGES}
    assert main(["run", "vision", "--out", str(vision_run), *TINY]) == 0
    assert {s: _mtimes(vision_run, s) for s in STAGES} == before
    assert capsys.readouterr().out.count("up to date") >= len(STAGES)


def test_vision_experiment_longer_train_continues(vision_run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    shutil.copytree(vision_run, out)
    images = _mtimes(out, "images")
    longer = [a for a in TINY if "max_steps" not in a] + ["--train.train.max_steps=80"]
    assert main(["run", "vision", "--out", str(out), *longer]) == 0
    printed = capsys.readouterr().out
    assert _mtimes(out, "images") == images and "=== images" not in printed
    assert "=== train" in printed and "=== evaluate" in printed
    assert "resuming" in printed and "steps 61..80" in printed
    assert json.loads((out / "evaluate" / "metrics.json").read_text())["step"] == 80


def test_misspelt_experiment_name_suggests_the_bundled_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'vision'"):
        load_experiment("vison")
