"""`mlscale finetune` in the one trainer: DDP and FSDP on 2 gloo ranks give the one-process
LoRA SFT curve, and a run killed with SIGKILL continues its exact curve with --resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 10
# grad_clip 0.2: this tiny adapter's gradient norm is mostly below the default 1.0, which would
# rarely act; the equivalence must hold with clipping acting (asserted below)
TRAIN = [f"--train.max_steps={STEPS}", "--train.warmup_steps=2", "--train.lr=1e-2", "--train.min_lr=1e-3",
         "--train.eval_every=5", "--train.eval_batches=2", "--train.checkpoint_every=5",
         "--train.device=cpu", "--train.log_every=5", "--train.grad_clip=0.2",
         "--data.seq_len=192", "--lora.r=4", "--lora.alpha=8"]


def finetune(base: Path, data: Path, out: Path, nproc: int, *extra: str) -> dict[int, tuple[float, bool]]:
    cmd = [sys.executable, "-m", "mlscale", "finetune", str(base), "--data", str(data), "--out", str(out),
           "--method", "lora", *TRAIN, f"--nproc={nproc}", *extra]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return curve(out)


def curve(out: Path) -> dict[int, tuple[float, bool]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["train_loss"], r["clipped"]) for r in records if "train_loss" in r}


@pytest.fixture(scope="module")
def single(base_run, alpaca_file, tmp_path_factory) -> dict[int, tuple[float, bool]]:
    """One process, global batch 8."""
    return finetune(base_run, alpaca_file, tmp_path_factory.mktemp("single") / "ft", 1, "--train.batch_size=8")


def assert_same_curve(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    worst = max(abs(a[s][0] - b[s][0]) for s in a)
    assert worst <= tol, f"largest loss difference {worst:.2e} > {tol}"
    clipped = [s for s in a if a[s][1]]
    assert len(clipped) >= STEPS // 2 and clipped == [s for s in b if b[s][1]]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_give_the_one_process_lora_curve(base_run, alpaca_file, single, tmp_path, strategy):
    out = tmp_path / strategy
    ranks = finetune(base_run, alpaca_file, out, 2, "--train.batch_size=4", f"--parallel.strategy={strategy}")
    assert_same_curve(ranks, single)
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and (out / "adapter" / "adapter_model.safetensors").exists()


def test_a_killed_finetune_resumes_its_exact_curve(base_run, alpaca_file, single, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mlscale", "finetune", str(base_run), "--data", str(alpaca_file), "--out",
           str(out), "--method", "lora", *TRAIN, "--train.batch_size=8", "--train.checkpoint_every=2"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and max(curve(out), default=0) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    resumed = finetune(base_run, alpaca_file, out, 1, "--train.batch_size=8", "--train.checkpoint_every=2",
                       "--resume")
    assert resumed == single  # every step's loss, bit for bit (one process, CPU)
