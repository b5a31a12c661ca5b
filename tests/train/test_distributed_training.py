"""Data and tensor parallelism through torchrun (gloo, 2 CPU processes) match one process.

Each case launches the real command line (`torchrun -m mlscale pretrain`) on tiny token
data and compares the per-step losses of metrics.jsonl with a single-process run that has
the same global batch (batch_size x data-parallel ranks). Gradient clipping runs at its
default (train.grad_clip=1.0) and acts in most steps of these runs: each case asserts
that it clipped, and at the same steps as one process.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = 20
MODEL = ["--model.n_layer=2", "--model.n_head=4", "--model.n_kv_head=2", "--model.d_model=32",
         "--model.seq_len=16"]
TRAIN = [f"--train.max_steps={STEPS}", "--train.warmup_steps=2", "--train.lr=3e-3",
         "--train.eval_every=10", "--train.eval_batches=2", "--train.checkpoint_every=10",
         "--train.device=cpu", "--train.log_every=10"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text() -> str:
    from sample_data import shakespeare_text

    return shakespeare_text()[:60_000]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    from mlscale.config import load_config
    from mlscale.tokenize import TokenizeConfig, tokenize_corpus

    root = tmp_path_factory.mktemp("dist")
    src = root / "text.txt"
    src.write_text(_text())
    cfg = load_config(TokenizeConfig, overrides=["--tokenizer.kind=char", "--shards.workers=1"])
    tokenize_corpus([src], root / "tok", cfg, progress=False)
    return root / "tok"


def pretrain(tokens: Path, out: Path, nproc: int, *extra: str) -> dict[int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["-m", "mlscale", "pretrain", "--data", str(tokens), "--out", str(out), *MODEL, *TRAIN, *extra]
    if nproc == 1:
        cmd = [sys.executable, *base]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", "--master_addr=127.0.0.1", *base]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["train_loss"], r["clipped"]) for r in records if "train_loss" in r}


def assert_same_curve(a: dict[int, tuple], b: dict[int, tuple], tol: float = 1e-5) -> None:
    """Same losses within `tol`, and gradient clipping active at the same steps."""
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    worst = max(abs(a[s][0] - b[s][0]) for s in a)
    assert worst <= tol, f"largest loss difference {worst:.2e} > {tol}"
    clipped = [s for s in a if a[s][1]]
    assert len(clipped) >= STEPS // 4, f"clipping acted in only {len(clipped)} steps"
    assert clipped == [s for s in b if b[s][1]]


@pytest.fixture(scope="module")
def single(tokens, tmp_path_factory) -> dict[int, float]:
    """One process, global batch 8."""
    return pretrain(tokens, tmp_path_factory.mktemp("single") / "run", 1, "--train.batch_size=8")


def test_ddp_two_ranks_matches_one_process(tokens, single, tmp_path):
    ddp = pretrain(tokens, tmp_path / "ddp", 2, "--train.batch_size=4", "--parallel.strategy=ddp")
    assert_same_curve(ddp, single)


def test_fsdp_two_ranks_matches_and_resumes_on_one_rank(tokens, single, tmp_path):
    run = tmp_path / "fsdp"
    fsdp = pretrain(tokens, run, 2, "--train.batch_size=4", "--parallel.strategy=fsdp")
    assert_same_curve(fsdp, single)
    # the checkpoint written by 2 FSDP ranks resumes on 1 rank and continues the curve
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-00000010", "step-00000020"]
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-00000020")
    (run / "manifest.json").unlink()
    resumed = pretrain(tokens, run, 1, "--train.batch_size=8", "--resume")
    assert_same_curve(resumed, single)


def test_tensor_parallel_two_ranks_matches_one_process(tokens, tmp_path, single):
    tp = pretrain(tokens, tmp_path / "tp", 2, "--train.batch_size=8", "--parallel.tp=2",
                  "--parallel.strategy=fsdp")
    assert_same_curve(tp, single)


def test_tensor_parallel_alone_clips_like_one_process(tokens, tmp_path, single):
    """TP=2 without FSDP: tensor-parallel DTensor weights beside plain replicated ones
    (embeddings, norms). Clipping them together once failed ("aten._foreach_mul_.Scalar
    got mixed torch.Tensor and DTensor")."""
    tp = pretrain(tokens, tmp_path / "tp", 2, "--train.batch_size=8", "--parallel.tp=2")
    assert_same_curve(tp, single)


def test_resume_refuses_another_global_batch(tokens, tmp_path):
    run = tmp_path / "r"
    pretrain(tokens, run, 1, "--train.batch_size=8", "--train.max_steps=10")
    r = subprocess.run([sys.executable, "-m", "mlscale", "pretrain", "--data", str(tokens), "--out",
                        str(run), *MODEL, *TRAIN, "--train.batch_size=4", "--resume"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "global batch of 8" in r.stderr and "--train.batch_size=8" in r.stderr


ONE_RANK_FSDP = r"""
import json, sys, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from mlscale.model.llama import LlamaConfig
from mlscale.model.registry import get_family
from mlscale.train.config import ParallelConfig
from mlscale.runtime.dist import DistEnv
from mlscale.train.parallel import apply_data_parallel
from torch.distributed.tensor import DTensor

dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:" + sys.argv[1])
env = DistEnv(mesh=init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp", "tp")))
cfg = LlamaConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, seq_len=16, vocab_size=40)
g = torch.Generator().manual_seed(0)
batches = [torch.randint(0, 40, (4, 17), generator=g) for _ in range(3)]
curves = {}
for name in ("plain", "fsdp"):
    torch.manual_seed(0)
    model = get_family("llama").build(cfg)
    blocks = list(model.blocks)
    run = apply_data_parallel(model, blocks, ParallelConfig(strategy="fsdp"), env) if name == "fsdp" else model
    sharded = all(isinstance(p, DTensor) for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for b in batches:
        loss = run(b[:, :-1], b[:, 1:])[1]
        loss.backward(); opt.step(); opt.zero_grad()
        losses.append(loss.item())
    curves[name] = {"losses": losses, "dtensors": sharded}
print(json.dumps(curves))
dist.destroy_process_group()
"""


def test_fsdp_on_a_one_rank_mesh_wraps_and_trains_like_the_plain_model():
    """bench_gpu_scale.py measures FSDP on one GPU: a one-rank dp mesh must still wrap."""
    r = subprocess.run([sys.executable, "-c", ONE_RANK_FSDP, str(_free_port())],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    curves = json.loads(r.stdout.strip().splitlines()[-1])
    assert curves["fsdp"]["dtensors"] and not curves["plain"]["dtensors"]
    for a, b in zip(curves["plain"]["losses"], curves["fsdp"]["losses"]):
        assert abs(a - b) < 1e-5
