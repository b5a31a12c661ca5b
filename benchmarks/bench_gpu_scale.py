"""Training efficiency on one GPU (issue 5): throughput and MFU of ~124M and ~350M models
with and without activation checkpointing, and the largest model that trains with FSDP +
activation checkpointing.

    python benchmarks/bench_gpu_scale.py                   # CUDA: every part (about 10 min on an H100)
    python benchmarks/bench_gpu_scale.py --parts throughput # four compiled runs (~6 min)
    python benchmarks/bench_gpu_scale.py --parts largest    # from ~60% of memory upwards (~3 min)
    python benchmarks/bench_gpu_scale.py --dry-run         # tiny shapes on CPU: checks the code paths

throughput: mlscale's own training step (train/loop.py: compute_gradients + apply_update,
fused AdamW, gradient clipping) in bf16 autocast with torch.compile, at GPT-2 small
(12 x 768, context 1024, ~124M parameters) and GPT-2 medium (24 x 1024, ~355M), each with
`train.activation_checkpointing` none and full at the same batch; tokens/s, MFU (model
FLOPs 6N + 12 L d T per token against the device's dense bf16 peak) and peak memory.

largest: models of growing size, each trained for a few steps with FSDP2 (`fully_shard`
on a one-rank mesh: fp32 parameters, gradients and AdamW state, 16 bytes per parameter,
gathered in bf16 block by block) and full activation checkpointing, eager, batch 1 x 1024
tokens, until one runs out of memory; the largest that trains is reported with its speed.

Each measurement runs in its own subprocess (a fresh CUDA context; an out-of-memory
error ends only that one), prints one JSON line, and the parent prints markdown tables.
Results also go to --out (JSON lines) as they arrive, so a cut-off run keeps what it had.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_train import time_steps  # noqa: E402

VOCAB = 50304
THROUGHPUT = [  # name, layers, width, heads, batch
    ("124M", 12, 768, 12, 32),
    ("350M", 24, 1024, 16, 16),
]
LARGEST = [  # name, layers, width, heads: ~16 bytes per parameter with AdamW in fp32
    ("1.3B", 24, 2048, 16),
    ("2.7B", 32, 2560, 20),
    ("4.1B", 32, 3200, 25),
    ("5.5B", 32, 3712, 29),
    ("6.7B", 32, 4096, 32),
    ("8.3B", 40, 4096, 32),
    ("10.4B", 40, 4608, 36),
]
DRY_THROUGHPUT = [("tiny-a", 2, 64, 4, 2), ("tiny-b", 2, 96, 4, 2)]
DRY_LARGEST = [("tiny-1", 2, 64, 4), ("tiny-2", 3, 96, 4)]


# ------------------------------------------------------------------------ one measurement
def one_run(spec: dict) -> dict:
    """Train the model of `spec` for a few steps in this process; return its figures."""
    import torch.distributed as dist

    try:
        return _train_and_time(spec)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train_and_time(spec: dict) -> dict:
    import numpy as np

    from mlscale.config import from_dict
    from mlscale.model.registry import family_of
    from mlscale.train.config import PretrainConfig
    from mlscale.runtime.device import peak_flops
    from mlscale.runtime import Runtime
    from mlscale.runtime.dist import DistEnv
    from mlscale.tasks.lm import LanguageModeling
    from mlscale.train.optimizer import build_optimizer
    from mlscale.train.parallel import parallelize
    from mlscale.train.trainer import BatchPrefetcher, apply_update, compute_gradients

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    dtype = torch.bfloat16
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = from_dict(PretrainConfig, {
        "model": {"n_layer": spec["layers"], "n_head": spec["heads"], "d_model": spec["width"],
                  "seq_len": spec["seq_len"], "vocab_size": spec["vocab"]},
        "train": {"batch_size": spec["batch"], "compile": spec["compile"], "device": device.type,
                  "dtype": "bf16", "activation_checkpointing": spec["ac"], "warmup_steps": 0,
                  "max_steps": 10 ** 6, "lr": 3e-4, "min_lr": 3e-5},
        "parallel": {"strategy": "fsdp" if spec["fsdp"] else "ddp"}})
    env = DistEnv()
    if spec["fsdp"]:
        # a one-rank process group and mesh, so that fully_shard wraps the model
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1,
                                init_method=f"tcp://127.0.0.1:{spec['port']}")
        env = DistEnv(mesh=init_device_mesh(device.type, (1, 1), mesh_dim_names=("dp", "tp")))
    runtime = Runtime(device=device, dtype=dtype, env=env)
    torch.manual_seed(0)
    family = family_of(cfg.model)
    with torch.device("meta"):  # no host copy of a multi-billion-parameter model
        model = family.build(cfg.model)
    n_params, flops = model.num_params(), family.flops_per_sample(cfg.model, model)
    train_model = parallelize(model, family, cfg.parallel, env, checkpointing=spec["ac"],
                              compile=spec["compile"], param_dtype=dtype if spec["fsdp"] else None)
    model.to_empty(device=device)
    model.init_weights()
    optimizer = build_optimizer(model, cfg.train, family.no_weight_decay)
    data = np.random.default_rng(0).integers(0, spec["vocab"], 20_000_000, dtype=np.uint16)
    task = LanguageModeling.on_arrays(cfg, data, None, runtime)
    batches = BatchPrefetcher(task)

    def step(i: int) -> None:
        result = compute_gradients(train_model, task, i, 1, batches)
        if not result.finite:
            raise RuntimeError(f"non-finite loss {result.loss} at step {i}")
        apply_update(model, optimizer, result.grad_norm, 3e-4, 1.0)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = time_steps(step, spec["warmup"], spec["steps"],
                         torch.cuda.synchronize if cuda else (lambda: None))
    tokens_per_s = spec["batch"] * spec["seq_len"] / seconds
    peak = peak_flops(device, dtype)
    return {"name": spec["name"], "part": spec["part"], "ac": spec["ac"], "batch": spec["batch"],
            "seq_len": spec["seq_len"],
            "compile": spec["compile"], "fsdp": spec["fsdp"], "params": n_params,
            "step_ms": seconds * 1e3, "tokens_per_s": tokens_per_s,
            "mfu": flops * tokens_per_s / peak if peak else None,
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu"}


def params_of(layers: int, width: int, heads: int, vocab: int) -> int:
    """Parameter count of that shape (built on the meta device: no memory)."""
    from mlscale.model.llama import LlamaConfig
    from mlscale.model.registry import get_family

    with torch.device("meta"):
        return get_family("llama").build(LlamaConfig(n_layer=layers, d_model=width, n_head=heads,
                                                     vocab_size=vocab, seq_len=1024)).num_params()


OOM = "out of memory"


def _out_of_memory(stderr: str) -> bool:
    return any(m in stderr for m in ("out of memory", "OutOfMemoryError", "CUBLAS_STATUS_ALLOC_FAILED"))


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def total_memory_gib() -> float:
    """The GPU's memory, asked in a child process: a CUDA context in this parent would
    hold memory the measured children could not use."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_properties(0)"
                          ".total_memory / 2 ** 30)"], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(spec: dict, timeout: int, out: Path | None) -> dict:
    """`one_run(spec)` in a fresh subprocess; an error or timeout becomes the result."""
    spec = dict(spec, port=_free_port())
    # fewer fragmentation failures near the memory limit: the boundary is the model's
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", **os.environ}
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=timeout)
        stdout, stderr, failed = proc.stdout, proc.stderr, None
    except subprocess.TimeoutExpired as e:
        stdout, stderr = _text(e.stdout), _text(e.stderr)
        failed = f"timed out after {timeout} s"
    # a result printed before a failure at shutdown (NCCL teardown) still counts
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if lines:
        result = json.loads(lines[-1])
    elif failed is None and _out_of_memory(stderr):
        result = {**spec, "error": OOM}
    else:
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        result = {**spec, "error": failed or tail[0][:300]}
    result["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(result), flush=True)
    if out is not None:
        with out.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
    return result


# ------------------------------------------------------------------------------ tables
def _pct(x: float | None) -> str:
    return f"{x * 100:.1f}%" if x is not None else "n/a"


def _gib(x: float | None) -> str:
    return f"{x:.1f}" if x is not None else "n/a"


def throughput_table(results: list[dict]) -> str:
    rows = ["| model | parameters | activation checkpointing | batch x context | step (ms) | tokens/s | MFU "
            "| peak memory (GiB) |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['name']} | | {r['ac']} | {r['batch']} x {r['seq_len']} | failed: {r['error']} | | | |")
            continue
        rows.append(f"| {r['name']} | {r['params'] / 1e6:.0f}M | {r['ac']} | {r['batch']} x {r.get('seq_len', 1024)} | "
                    f"{r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {_pct(r['mfu'])} | {_gib(r['peak_gib'])} |")
    return "\n".join(rows)


def largest_table(results: list[dict]) -> str:
    rows = ["| model | parameters | result | step (ms) | tokens/s | MFU | peak memory (GiB) |",
            "|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['name']} | | {r['error']} | | | | |")
        else:
            rows.append(f"| {r['name']} | {r['params'] / 1e9:.2f}B | trains | {r['step_ms']:.0f} | "
                        f"{r['tokens_per_s']:,.0f} | {_pct(r['mfu'])} | {_gib(r['peak_gib'])} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="throughput,largest", help="comma list: throughput, largest")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (gloo): check the code")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per throughput run")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    ap.add_argument("--no-compile", action="store_true", help="throughput in eager mode")
    ap.add_argument("--timeout", type=int, default=420, help="seconds per measurement")
    ap.add_argument("--start", default=None, help="largest: first model to try (e.g. 4.1B); default: "
                    "the largest whose 16 bytes per parameter take at most 60%% of --budget-gib")
    ap.add_argument("--budget-gib", type=float, default=None, help="largest: GPU memory (default: the device's)")
    ap.add_argument("--out", type=Path, default=None, help="append JSON lines here as results arrive")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(json.loads(args.one))))
        return 0
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible: nothing measured (use --dry-run to check the code on CPU)")
        return 1
    seq = 32 if args.dry_run else 1024
    vocab = 512 if args.dry_run else VOCAB
    parts = {p.strip() for p in args.parts.split(",")}
    print(f"torch {torch.__version__}", flush=True)
    tables = []
    measured: list[dict] = []
    if "throughput" in parts:
        results = []
        for name, layers, width, heads, batch in (DRY_THROUGHPUT if args.dry_run else THROUGHPUT):
            for ac in ("none", "full"):
                results.append(measure(dict(
                    part="throughput", name=name, layers=layers, width=width, heads=heads, batch=batch,
                    seq_len=seq, vocab=vocab, ac=ac, compile=not args.no_compile, fsdp=False,
                    device=device, steps=args.steps, warmup=args.warmup), args.timeout, args.out))
        measured += results
        tables.append("## Throughput on one GPU: bf16, "
                      f"{'eager' if args.no_compile else 'torch.compile'}\n\n" + throughput_table(results))
    if "largest" in parts:
        results = []
        candidates = DRY_LARGEST if args.dry_run else LARGEST
        if args.start:
            candidates = candidates[[c[0] for c in candidates].index(args.start):]
        elif not args.dry_run:
            budget = args.budget_gib or total_memory_gib()
            sizes = [params_of(layers, width, heads, vocab) for _, layers, width, heads in candidates]
            first = max([i for i, n in enumerate(sizes) if 16 * n / 2 ** 30 <= 0.6 * budget], default=0)
            candidates = candidates[first:]
        for name, layers, width, heads in candidates:
            r = measure(dict(part="largest", name=name, layers=layers, width=width, heads=heads, batch=1,
                             seq_len=seq, vocab=vocab, ac="full", compile=False, fsdp=True,
                             device=device, steps=5, warmup=2), args.timeout, args.out)
            results.append(r)
            if "error" in r:
                break
        measured += results
        fits = [r for r in results if "error" not in r]
        stop = results[-1].get("error") if results else None
        if not fits:
            verdict = "none of the candidates trained"
        else:
            verdict = (f"largest that trains: **{fits[-1]['name']}** ({fits[-1]['params'] / 1e9:.2f}B "
                       "parameters)")
            if stop is None:
                verdict += "; every candidate trained, so the limit is higher"
            elif stop != OOM:
                verdict += f"; the next one failed for another reason than memory ({stop}): not a limit"
        tables.append("## Largest model with FSDP + full activation checkpointing on one GPU "
                      "(bf16, eager, batch 1 x context)\n\n" + largest_table(results) + "\n\n" + verdict)
    names = {r["device"] for r in measured if "device" in r}
    name = "CPU (dry run)" if args.dry_run else ", ".join(sorted(names)) or "GPU"
    print(f"\n# {name}, torch {torch.__version__}\n")
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
