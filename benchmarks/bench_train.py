"""Training throughput: mlscale's Llama against transformers' LlamaForCausalLM.

CPU (default): one training step (forward, backward, fused AdamW) of both models at the
same shape, batch and dtype (fp32), alternated in one process so that both see the same
machine load; medians of per-step times; the ratio ours / theirs (target >= 1.2x). Peak
memory is measured for each model in a fresh subprocess: the peak RSS while training,
above the RSS after a warm-up step on a one-layer miniature (so imports, thread pools and
kernel libraries are not counted).

    python benchmarks/bench_train.py                      # nanoGPT baby-GPT shape
    python benchmarks/bench_train.py --shape small        # a 6x384 model, context 256
    python benchmarks/bench_train.py --compile            # both under torch.compile
    MLSCALE_CPU_KERNELS=0 python benchmarks/bench_train.py  # ours without its fused C++ kernels

Eager is what `mlscale pretrain` runs on a CPU by default (train.compile=false), with the
fused C++ kernels of model/kernels/cpu_kernels.cpp swapped in as the trainer does it
(`family.fuse_cpu(model)` after building; the kernels build on first use, before the timed
steps); with --compile both models are compiled (inductor's C++ backend; a minute of
compiling).

GPU (--gpu): a GPT-2-small-sized model (12 layers, width 768, 12 heads, context 1024,
vocab 50304) in bf16 autocast with torch.compile, through mlscale's own training step
(train/trainer.py: compute_gradients + apply_update on the lm task); tokens/s and MFU against the device's
dense bf16 peak (H100/H200: 989 TFLOP/s). transformers' model, compiled too, is the peer,
with a plain step (forward, backward, fused AdamW; ours also measures and clips the
gradient norm and checks it is finite). Prints a markdown table and exits 0 even when a part fails (the failure is
in the table), and never touches the network.

    python benchmarks/bench_train.py --gpu [--batch-size 64] [--steps 30]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mlscale.model.llama import LlamaConfig  # noqa: E402
from mlscale.model.registry import get_family  # noqa: E402

FAMILY = get_family("llama")

SHAPES = {
    # nanoGPT's CPU baby GPT on tiny Shakespeare (chars): the acceptance budget
    "baby": dict(n_layer=4, n_head=4, d_model=128, seq_len=64, vocab_size=65, batch=12),
    # nanoGPT's GPU Shakespeare shape at a CPU-friendly batch
    "small": dict(n_layer=6, n_head=6, d_model=384, seq_len=256, vocab_size=65, batch=4),
    # GPT-2 small
    "gpt2": dict(n_layer=12, n_head=12, d_model=768, seq_len=1024, vocab_size=50304, batch=16),
}


def model_config(shape: dict) -> LlamaConfig:
    cfg = LlamaConfig(n_layer=shape["n_layer"], n_head=shape["n_head"], d_model=shape["d_model"],
                      seq_len=shape["seq_len"], vocab_size=shape["vocab_size"], tie_embeddings=True)
    cfg.validate()
    return cfg


def build(which: str, cfg: LlamaConfig, device: torch.device) -> nn.Module:
    """Our Llama (with the fused CPU kernels swapped in, as the trainer does), or
    transformers' LlamaForCausalLM of exactly the same shape."""
    torch.manual_seed(0)
    if which == "ours":
        model = FAMILY.build(cfg)
        FAMILY.fuse_cpu(model)
        return model.to(device)
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.seq_len,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False, mlp_bias=False, use_cache=False, attn_implementation="sdpa",
        torch_dtype=torch.float32,
    )
    return LlamaForCausalLM(hf_cfg).to(device)


def loss_of(which: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if which == "ours":
        return model(x, y)[1]
    # transformers shifts labels itself; give it the targets' row already aligned with x
    logits = model(input_ids=x, use_cache=False).logits
    return nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))


def make_step(which: str, model: nn.Module, device: torch.device, dtype: torch.dtype):
    """One training step: forward, backward, fused AdamW update."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_of(which, model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def batch(shape: dict, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, shape["vocab_size"], (shape["batch"], shape["seq_len"] + 1), generator=g)
    return ids[:, :-1].to(device), ids[:, 1:].to(device)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux: clear_refs 5) and return the current RSS in MB."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset, in MB (VmHWM; ru_maxrss cannot be reset)."""
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------- CPU
def memory_child(which: str, shape_name: str, steps: int) -> None:
    """Run in a fresh process: peak RSS of training `which`, above the idle baseline."""
    import transformers  # noqa: F401  (the same imports as the parent: a fair baseline)

    shape = SHAPES[shape_name]
    device = torch.device("cpu")
    # warm up on a miniature of the same model first: lazy imports, thread pools and
    # kernel libraries then count in the baseline, not in the model's training memory
    mini = dict(shape, n_layer=1, d_model=shape["n_head"] * 8, batch=1)
    warm = build(which, model_config(mini), device)
    make_step(which, warm, device, torch.float32)(*batch(mini, device, 0))
    del warm
    gc.collect()
    base = reset_peak_rss()
    model = build(which, model_config(shape), device)
    step = make_step(which, model, device, torch.float32)
    for i in range(steps):
        step(*batch(shape, device, i))
    print(json.dumps({"peak_mb": peak_rss_mb() - base}))


def measure_memory(which: str, shape_name: str, steps: int = 3) -> float | None:
    out = subprocess.run([sys.executable, __file__, "--memory-of", which, "--shape", shape_name,
                          "--steps", str(steps)], capture_output=True, text=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)["peak_mb"]
    print(f"memory measurement of {which} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
    return None


def bench_cpu(shape_name: str, rounds: int, steps: int, warmup: int, compile_: bool = False) -> None:
    shape = SHAPES[shape_name]
    cfg = model_config(shape)
    device = torch.device("cpu")
    tokens = shape["batch"] * shape["seq_len"]
    models = {w: build(w, cfg, device) for w in ("ours", "transformers")}
    n_ours = sum(p.numel() for p in models["ours"].parameters())
    n_hf = sum(p.numel() for p in models["transformers"].parameters())
    assert n_ours == n_hf, f"shapes differ: {n_ours} vs {n_hf} parameters"
    steps_fn = {w: make_step(w, torch.compile(m) if compile_ else m, device, torch.float32)
                for w, m in models.items()}
    times: dict[str, list[float]] = {w: [] for w in models}
    for w in models:  # warm up allocator and kernels (and compile)
        for i in range(warmup):
            steps_fn[w](*batch(shape, device, i))
    for r in range(rounds):
        # alternate, and alternate who goes first, so drifts in machine load hit both
        order = list(models) if r % 2 == 0 else list(reversed(list(models)))
        for w in order:
            for i in range(steps):
                x, y = batch(shape, device, 1000 + r * steps + i)
                t0 = time.perf_counter()
                steps_fn[w](x, y)
                times[w].append(time.perf_counter() - t0)
    med = {w: statistics.median(t) for w, t in times.items()}
    mem = {w: measure_memory(w, shape_name) for w in models}
    ratio = med["transformers"] / med["ours"]
    print(f"\n## Training step on CPU: {shape_name} shape ({cfg.n_layer} layers, width {cfg.d_model}, "
          f"{cfg.n_head} heads, context {cfg.seq_len}, batch {shape['batch']}, vocab {cfg.vocab_size}, "
          f"fp32, {'torch.compile' if compile_ else 'eager'}, {torch.get_num_threads()} threads, "
          f"{n_ours / 1e6:.2f}M parameters)\n")
    print("| model | median step (ms) | tokens/s | peak memory (MB, eager) |")
    print("|---|---:|---:|---:|")
    for w in models:
        m = f"{mem[w]:.0f}" if mem[w] is not None else "n/a"
        print(f"| {'mlscale Llama' if w == 'ours' else 'transformers LlamaForCausalLM'} | "
              f"{med[w] * 1e3:.2f} | {tokens / med[w]:,.0f} | {m} |")
    print(f"\nspeed-up of mlscale over transformers: **{ratio:.2f}x** (target >= 1.2x); "
          f"{rounds} rounds x {steps} steps each, medians")


# ------------------------------------------------------------------------------- GPU
def time_steps(step_fn, warmup: int, steps: int, sync) -> float:
    """Median seconds per step of `step_fn(i)` after `warmup` steps (compilation).

    Steps are timed in blocks of 5 with one device sync at the end of each, so the host
    work of one step may overlap the device work of the previous one as in a real run.
    """
    for i in range(warmup):
        step_fn(i)
    sync()
    block = 5
    times = []
    for b in range(max(1, steps // block)):
        t0 = time.perf_counter()
        for i in range(block):
            step_fn(warmup + b * block + i)
        sync()
        times.append((time.perf_counter() - t0) / block)
    return statistics.median(times)


def bench_gpu(batch_size: int, steps: int, warmup: int, peer: bool, compile_: bool,
              device_str: str = "cuda", shape_name: str = "gpt2") -> None:
    import numpy as np

    from mlscale.config import from_dict
    from mlscale.train.config import PretrainConfig
    from mlscale.runtime.device import device_name, peak_flops
    from mlscale.runtime import Runtime
    from mlscale.tasks.lm import LanguageModeling
    from mlscale.train.optimizer import build_optimizer
    from mlscale.train.trainer import BatchPrefetcher, apply_update, compute_gradients, wrap_model

    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    if device_str == "cuda" and not torch.cuda.is_available():
        print("## GPU training benchmark\n\nno CUDA device visible: nothing measured")
        return
    device = torch.device(device_str)
    dtype = torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    shape = dict(SHAPES[shape_name], batch=batch_size)
    cuda = device.type == "cuda"
    cfg = from_dict(PretrainConfig, {
        "model": {k: shape[k] for k in ("n_layer", "n_head", "d_model", "seq_len", "vocab_size")},
        "train": {"batch_size": batch_size, "compile": compile_, "device": device.type, "dtype": "bf16",
                  "warmup_steps": 0, "max_steps": 10 ** 6, "lr": 3e-4, "min_lr": 3e-5}})
    runtime = Runtime(device=device, dtype=dtype)
    peak = peak_flops(device, dtype)
    tokens = batch_size * cfg.model.seq_len
    data = np.random.default_rng(0).integers(0, cfg.model.vocab_size, 50_000_000, dtype=np.uint16)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def run(label: str, model: nn.Module, step_fn) -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        med = time_steps(step_fn, warmup, steps, sync)
        tok_s = tokens / med
        fpt = FAMILY.flops_per_sample(cfg.model, ours_ref)
        mfu = f"{fpt * tok_s / peak * 100:.1f}%" if peak else "n/a"
        mem = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f}" if cuda else "n/a"
        rows.append((label, f"{med * 1e3:.1f}", f"{tok_s:,.0f}", mfu, mem))
        print(f"measured {label}", flush=True)

    torch.manual_seed(0)
    ours_ref = FAMILY.build(cfg.model).to(device)
    try:
        task = LanguageModeling.on_arrays(cfg, data, None, runtime)
        model = wrap_model(ours_ref, task)
        opt = build_optimizer(ours_ref, cfg.train, FAMILY.no_weight_decay)
        batches = BatchPrefetcher(task)

        def ours_step(i: int) -> None:
            res = compute_gradients(model, task, i, 1, batches)
            apply_update(ours_ref, opt, res.grad_norm, 3e-4, 1.0)

        run(f"mlscale Llama (bf16{', compile' if compile_ else ''}, loop step)", model, ours_step)
        del opt, model
    except Exception as e:  # keep going: the table reports what failed
        notes.append(f"mlscale: {type(e).__name__}: {e}")
        traceback.print_exc()
    if cuda:
        torch.cuda.empty_cache()
    if peer:
        try:
            hf = build("transformers", cfg.model, device)
            hf_run = torch.compile(hf) if compile_ else hf
            step = make_step("transformers", hf_run, device, dtype)

            def hf_step(i: int) -> None:
                from mlscale.tokenize import sample_batch

                x, y = sample_batch(data, batch_size, cfg.model.seq_len, 0, i)
                step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))

            run(f"transformers LlamaForCausalLM (bf16{', compile' if compile_ else ''})", hf, hf_step)
            del hf, hf_run
        except Exception as e:
            notes.append(f"transformers: {type(e).__name__}: {e}")
            traceback.print_exc()
    name = device_name(device)
    m = cfg.model
    print(f"\n## Training step on {name}: {shape_name} shape ({m.n_layer} layers, width {m.d_model}, "
          f"{m.n_head} heads, context {m.seq_len}, vocab {m.vocab_size}, batch {batch_size}, "
          f"{ours_ref.num_params() / 1e6:.1f}M parameters, "
          f"{FAMILY.flops_per_sample(m, ours_ref) / 1e6:.0f} MFLOPs/token)\n")
    print(f"peak dense bf16: {peak / 1e12:.0f} TFLOP/s\n" if peak else "peak FLOPs of this GPU unknown: MFU n/a\n")
    print("| model | median step (ms) | tokens/s | MFU | peak memory (GiB) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for n in notes:
        print(f"\nfailed: {n}")
    print(f"\n{warmup} warm-up steps (compilation), then the median over blocks of 5 steps "
          f"({max(1, steps // 5) * 5} steps)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="GPT-2-small on a CUDA GPU, bf16 + compile")
    p.add_argument("--shape", choices=sorted(SHAPES), help="default: baby on CPU, gpt2 with --gpu")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (GPU: in total)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64,
                   help="GPU batch size (64: ~41 GiB for ours, fits an 80 GB H100)")
    p.add_argument("--no-peer", action="store_true", help="GPU: skip transformers")
    p.add_argument("--no-compile", action="store_true", help="GPU: eager mode")
    p.add_argument("--compile", action="store_true", help="CPU: compile both models")
    p.add_argument("--device", default="cuda", help="GPU mode's device (cpu: a dry run of the code path)")
    p.add_argument("--memory-of", choices=("ours", "transformers"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_of:
        memory_child(args.memory_of, args.shape or "baby", args.steps or 3)
        return 0
    if args.gpu:
        try:
            bench_gpu(args.batch_size, args.steps or 30, args.warmup or 10, not args.no_peer,
                      not args.no_compile, args.device, args.shape or "gpt2")
        except Exception:
            traceback.print_exc()
            print("\nthe GPU benchmark failed; see the traceback above")
        return 0
    bench_cpu(args.shape or "baby", args.rounds, args.steps or 20, args.warmup or 5, args.compile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
