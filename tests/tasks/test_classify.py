"""The classify task on the bundled Fashion-MNIST subset with a tiny ViT: it learns, it
evaluates, a run killed with SIGKILL resumes its exact curve (mixup, CutMix and EMA on),
and DDP on 2 gloo ranks equals one process (both with the BatchNorm conv stem)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mlscale.cli import main
from mlscale.data import fashion_mnist_sample
from mlscale.train.metrics import read_metrics
from torchrun_helpers import run_one, run_ranks

TINY = ["--model.d_model=32", "--model.n_layer=2", "--model.n_head=2", "--model.patch_size=7",
        "--train.batch_size=32", "--train.warmup_steps=3", "--train.lr=3e-3", "--train.min_lr=3e-4",
        "--train.device=cpu", "--train.log_every=10", "--train.eval_every=0", "--classify.eval_batch_size=500"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fm") / "images"
    assert main(["images", str(fashion_mnist_sample()), "--out", str(out)]) == 0
    return out


# early convolutions with BatchNorm: running statistics to resume, batch statistics to share across ranks
CONV_STEM = ("--model.stem=conv", "--model.patch_size=4", "--model.stem_width=8", "--model.stem_full_res=1")


def command(images: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["-m", "mlscale", "train", "--task", "classify", "--data", str(images), "--out", str(out),
            f"--train.max_steps={steps}", f"--train.checkpoint_every={steps // 2}", *TINY, *extra]


def curve(out: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r}


def test_a_tiny_vit_learns_the_subset_and_evaluate_reports_accuracy(images, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(command(images, run, 300, "--classify.ema=0.99")[2:]) == 0
    last = read_metrics(run / "metrics.jsonl")[-1]
    assert last["top1"] > 0.35 and last["top5"] > 0.85  # 3 epochs of 3,000 images; chance: 0.1 and 0.5
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 1000 and result["top1"] == pytest.approx(last["top1"])
    assert set(result["per_class"]) == set(json.loads((images / "classes.json").read_text()))
    assert sum(map(sum, result["confusion"])) == 1000


def test_label_smoothing_on_mixed_targets_is_timm_s_soft_target_loss():
    logits, a, b, lam, smoothing = torch.randn(6, 10), torch.randint(0, 10, (6,)), torch.randint(0, 10, (6,)), 0.3, 0.1
    off, on = smoothing / 10, 1 - smoothing + smoothing / 10  # timm's mixup_target
    soft = lam * F.one_hot(a, 10) * (on - off) + (1 - lam) * F.one_hot(b, 10) * (on - off) + off
    timm = (-soft * F.log_softmax(logits, -1)).sum(-1).mean()
    ours = F.cross_entropy(logits, lam * F.one_hot(a, 10).float() + (1 - lam) * F.one_hot(b, 10).float(),
                           label_smoothing=smoothing)
    torch.testing.assert_close(ours, timm)


def test_a_killed_run_resumes_its_exact_curve(images, tmp_path):
    mixing = ("--classify.mixup=0.8", "--classify.cutmix=1.0", "--classify.ema=0.9", *CONV_STEM)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, *command(images, straight, 20, *mixing)], env=env, check=True,
                   capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *command(images, killed, 20, *mixing)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").exists() and max(curve(killed), default=0) >= 13:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists(), "the run finished before it could be killed"
    subprocess.run([sys.executable, *command(images, killed, 20, *mixing), "--resume"], env=env, check=True,
                   capture_output=True, timeout=300)
    assert curve(killed) == curve(straight)  # every step, bit for bit
    ema = Path("checkpoints/step-00000020/task.safetensors")  # the EMA weights, resumed too
    assert (killed / ema).read_bytes() == (straight / ema).read_bytes()


def test_ddp_on_two_ranks_equals_one_process(images, tmp_path):
    extra = ("--classify.mixup=0.8", "--train.grad_clip=0.5", *CONV_STEM)
    one = command(images, tmp_path / "one", 20, *extra)
    two = command(images, tmp_path / "two", 20, *extra)
    two[two.index("--train.batch_size=32")] = "--train.batch_size=16"
    run_one(one)
    run_ranks(two)
    a, b = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-5
    clipped = [r["clipped"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if "clipped" in r]
    assert any(clipped)


def test_export_writes_a_pipeline_ready_vit_with_the_run_s_predictions(images, tmp_path, capsys):
    from PIL import Image
    from transformers import pipeline

    from mlscale.images.data import ImageData
    from mlscale.tasks.classify import load_classifier

    run = tmp_path / "run"
    assert main(command(images, run, 20)[2:]) == 0
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    classify = pipeline("image-classification", model=str(tmp_path / "hf"), device="cpu")
    val = ImageData(images).split("val")
    loaded = load_classifier(run)
    pre = loaded.preprocess
    x = (torch.from_numpy(val.images[:4].copy()).permute(0, 3, 1, 2).float() / 255 - pre["mean"][0]) / pre["std"][0]
    with torch.no_grad():
        ours = loaded.model(x).softmax(-1)
    for i in range(4):
        top = classify(Image.fromarray(val.images[i][:, :, 0], mode="L"), top_k=1)[0]
        assert top["label"] == loaded.classes[int(ours[i].argmax())]
        assert top["score"] == pytest.approx(float(ours[i].max()), abs=1e-4)
