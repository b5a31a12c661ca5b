"""A bad experiment file fails before any stage starts, naming the file, table and key."""
from __future__ import annotations

from pathlib import Path

import pytest

from mlscale.cli import main
from mlscale.errors import ConfigError
from mlscale.experiment.config import bundled_experiment, load_experiment, resolve_inputs
from mlscale.experiment.plan import STAGES

from experiment_helpers import write_tiny_experiment


@pytest.mark.parametrize("replace, expected", [
    ({"[evaluate]": "[evalute]"}, "unknown config key 'evalute'; did you mean 'evaluate'?"),
    ({"max_steps = 40": "max_step = 40"},
     "unknown config key 'pretrain.train.max_step'; did you mean 'pretrain.train.max_steps'?"),
    ({"max_steps = 40": 'max_steps = "forty"'}, "pretrain.train.max_steps: expected an integer"),
    ({"kind = \"char\"": "kind = \"bytes\""}, "tokenize.tokenizer.kind: 'bytes' is not one of"),
    ({'text = ["shakespeare-slice.txt"]': 'text = ["missing.txt"]'},
     "[inputs] text: 'missing.txt' not found"),
])
def test_experiment_bad_file_fails_before_any_stage(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    replace: dict[str, str], expected: str) -> None:
    toml = write_tiny_experiment(tmp_path / "experiment", **replace)
    out = tmp_path / "out"
    assert main(["run", str(toml), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(toml) in err and expected in err
    assert not out.exists()  # nothing started


def test_experiment_bad_override_names_the_key(tiny_experiment: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["run", str(tiny_experiment), "--out", str(out), "--pretrain.train.lr=-1"]) == 2
    assert "pretrain.train.lr: -1.0 is below the minimum 0.0" in capsys.readouterr().err
    assert not out.exists()


def test_experiment_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.toml")


def test_bundled_experiment_loads_with_bundled_inputs() -> None:
    cfg, base, source = load_experiment(None)
    assert source == str(bundled_experiment())
    documents, texts = resolve_inputs(cfg, base, source)
    assert len(documents) >= 4 and all(p.is_file() for p in documents)
    assert [p.name for p in texts] == ["tinyshakespeare.txt.gz"]
    assert cfg.tokenize.tokenizer.kind == "char" and cfg.pretrain.train.max_steps >= 1000
    assert STAGES == ("curate", "tokenize", "pretrain", "evaluate", "generate", "scaling", "finetune")
    assert not cfg.scaling.enabled and not cfg.finetune.enabled  # the optional stages are off
    assert cfg.finetune.train.max_steps == 200 and cfg.finetune.train.lr == 2e-4  # finetune's defaults


def test_relative_inputs_are_taken_from_the_experiment_folder(tiny_experiment: Path) -> None:
    cfg, base, source = load_experiment(tiny_experiment)
    _, texts = resolve_inputs(cfg, base, source)
    assert texts == [(tiny_experiment.parent / "shakespeare-slice.txt").resolve()]


def test_experiment_refuses_a_directory_another_run_is_writing(tiny_experiment: Path, tmp_path: Path) -> None:
    import fcntl

    from mlscale.errors import ArtifactError
    from mlscale.experiment import run_experiment

    out = tmp_path / "out"
    out.mkdir()
    cfg, base, source = load_experiment(tiny_experiment)
    with open(out / ".run.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ArtifactError, match="another `mlscale run` is writing"):
            run_experiment(cfg, out, base=base, source=source)
    assert sorted(p.name for p in out.iterdir()) == [".run.lock"]  # no stage started
