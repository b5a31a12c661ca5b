"""simclr, dino and mae through `mlscale train` on the bundled Fashion-MNIST subset with a
tiny ViT: they run and log their statistics, the probes of `mlscale evaluate --probe`
answer, DINO's prototypes stay frozen for the first steps and its teacher follows the
student, a deliberately collapsing DINO is stopped with its message, a resumed run
continues the exact curve, and 2 DDP ranks equal one process."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlscale.cli import main
from mlscale.data import fashion_mnist_sample
from mlscale.train.metrics import read_metrics
from torchrun_helpers import run_one, run_ranks

TINY = ["--model.d_model=32", "--model.n_layer=2", "--model.n_head=2", "--model.patch_size=7",
        "--train.batch_size=32", "--train.warmup_steps=3", "--train.lr=2e-3", "--train.min_lr=1e-4",
        "--train.device=cpu", "--train.log_every=10", "--train.eval_every=0", "--train.threads=1",
        "--monitor.knn_bank=1000", "--monitor.knn_queries=300"]
METHOD = {
    "simclr": ["--simclr.out_dim=32"],
    "dino": ["--dino.out_dim=256", "--dino.hidden=64", "--dino.bottleneck=32", "--dino.local_crops=2",
             "--local_views.size=14", "--dino.freeze_last_layer_steps=3"],
    "mae": ["--mae.decoder_dim=32", "--mae.decoder_depth=1", "--mae.decoder_heads=2"],
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fm") / "images"
    assert main(["images", str(fashion_mnist_sample()), "--out", str(out)]) == 0
    return out


def command(task: str, images: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--task", task, "--data", str(images), "--out", str(out), f"--train.max_steps={steps}",
            f"--train.checkpoint_every={steps // 2}", *TINY, *METHOD[task], *extra]


def curve(out: Path, key: str = "train_loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(out / "metrics.jsonl") if key in r}


@pytest.mark.parametrize("task", ["simclr", "dino", "mae"])
def test_each_method_trains_logs_its_statistics_and_its_features_can_be_probed(task, images, tmp_path, capsys):
    run = tmp_path / task
    assert main(command(task, images, run, 40, "--train.eval_every=40")) == 0
    losses = curve(run)
    assert sorted(losses) == list(range(1, 41)) and all(map(torch.isfinite, map(torch.tensor, losses.values())))
    # it learns something: DINO's loss is the teacher's entropy (which centering raises at
    # first) plus the KL to the student, and the KL is what the student brings down
    learnt = curve(run, "teacher_kl") if task == "dino" else losses
    first, last = sum(learnt[s] for s in range(1, 6)) / 5, sum(learnt[s] for s in range(36, 41)) / 5
    assert last < first
    assert 0 < curve(run, "spread")[40] < 2
    knn = curve(run, "knn_top1")
    assert sorted(knn) == [0, 40] and all(0.1 < v <= 1 for v in knn.values())
    if task == "dino":
        assert 0 < curve(run, "teacher_entropy")[40] < 5.6 and curve(run, "teacher_kl")[40] >= 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--probe", "knn"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["probe"] == "knn" and result["k"] == 20 and result["images"] == 1000
    assert 0.3 < result["knn_top1"] <= 1  # chance is 0.1
    report = (run / "report.html").read_text()  # written by evaluate, with the method's own figures
    own = {"simclr": [], "dino": ["<h2>Attention maps</h2>"], "mae": ["<h2>Reconstructions</h2>"]}[task]
    assert all(h in report for h in ["<h2>Training</h2>", "k-NN probe during training", "<h2>Embedding spread</h2>",
                                     *own])
    assert report.count('<img src="data:image/png;base64,') == 5 + len(own)
    assert main(["evaluate", str(run), "--probe", "linear"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.3 < result["linear_top1"] <= 1 and result["feature_dim"] == 32


def test_dino_freezes_its_prototypes_then_moves_them_and_the_teacher_follows_the_student(images, tmp_path):
    from mlscale.config import from_dict
    from mlscale.tasks.selfsup.base import load_pretrained
    from mlscale.tasks.selfsup.dino import DINO

    run = tmp_path / "dino"
    assert main(command("dino", images, run, 6, "--train.checkpoint_every=3")) == 0
    at3 = load_file(str(run / "checkpoints/step-00000003/model.safetensors"))
    at6 = load_file(str(run / "checkpoints/step-00000006/model.safetensors"))
    cfg = from_dict(DINO.config_cls, json.loads((run / "config.json").read_text()))
    torch.manual_seed(cfg.train.seed)
    start = DINO.build_network(cfg).state_dict()
    assert torch.equal(at3["head.prototypes"], start["head.prototypes"])  # frozen for steps 1..3
    assert not torch.equal(at6["head.prototypes"], start["head.prototypes"])
    teacher = load_file(str(run / "checkpoints/step-00000006/task.safetensors"))
    w = "backbone.blocks.0.mlp.fc1.weight"
    assert not torch.equal(teacher[f"teacher.{w}"], at6[w])  # an average, not a copy
    moved_teacher = (teacher[f"teacher.{w}"] - start[w]).norm()
    moved_student = (at6[w] - start[w]).norm()
    assert 0 < moved_teacher < 0.05 * moved_student  # momentum ~0.996: it trails far behind
    assert torch.count_nonzero(teacher["center"]) > 0
    loaded = load_pretrained(run)  # the teacher's backbone is the run's model
    assert torch.equal(loaded.model.state_dict()["blocks.0.mlp.fc1.weight"], teacher[f"teacher.{w}"])


def test_a_collapsing_dino_is_stopped_with_what_to_change(images, tmp_path, capsys):
    bad = ("--dino.teacher_temp=1.0", "--dino.warmup_teacher_temp=1.0", "--dino.center=false",
           "--collapse.patience=15")
    assert main(command("dino", images, tmp_path / "bad", 60, *bad)) != 0
    err = capsys.readouterr().err
    assert "DINO collapsed" in err and "flat" in err and "lower dino.teacher_temp" in err
    assert max(curve(tmp_path / "bad")) == 14  # stopped in step 15, as soon as the signature lasted


def test_a_resumed_dino_run_continues_the_exact_curve(images, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(command("dino", images, straight, 8)) == 0
    assert main(command("dino", images, resumed, 8)) == 0
    shutil.rmtree(resumed / "checkpoints" / "step-00000008")  # as if it had died after step 4's checkpoint
    (resumed / "manifest.json").unlink()
    assert main(command("dino", images, resumed, 8, "--resume")) == 0
    assert curve(resumed) == curve(straight)  # steps 5..8 recomputed from the teacher and center saved at 4
    tail = Path("checkpoints/step-00000008/task.safetensors")
    assert (resumed / tail).read_bytes() == (straight / tail).read_bytes()


@pytest.mark.parametrize("task", ["simclr", "dino"])
def test_ddp_on_two_ranks_equals_one_process(task, images, tmp_path):
    # DINO with the BatchNorm conv stem (statistics over the global batch); SimCLR with the
    # head's BatchNorm alone and a gentler lr: its loss amplifies float rounding (the
    # order of sums differs across ranks) more than the 1e-5 allow with the stem's too
    stem = ("--train.grad_clip=0.5",) + (
        ("--model.stem=conv", "--model.patch_size=4", "--model.stem_width=8", "--local_views.size=12")
        if task == "dino" else ("--train.lr=5e-4",))
    run_one(["-m", "mlscale", *command(task, images, tmp_path / "one", 10, *stem)])
    run_ranks(["-m", "mlscale", *command(task, images, tmp_path / "two", 10, *stem, "--train.batch_size=16")])
    a, b = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-5
    assert any(r["clipped"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if "clipped" in r)


@pytest.mark.parametrize("preset", ["simclr-fashion-mnist", "dino-fashion-mnist", "mae-fashion-mnist"])
def test_each_preset_runs_as_shipped(preset, images, tmp_path):
    run = tmp_path / preset
    assert main(["train", "--preset", preset, "--data", str(images), "--out", str(run), "--train.max_steps=2",
                 "--train.batch_size=16", "--train.warmup_steps=1", "--train.threads=1", "--monitor.knn_bank=300",
                 "--monitor.knn_queries=100"]) == 0
    assert sorted(curve(run)) == [1, 2]
    assert json.loads((run / "selfsup.json").read_text())["method"] == preset.split("-")[0]
