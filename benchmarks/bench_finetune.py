"""Memory and step time of full, LoRA and QLoRA fine-tuning of the same model, with PEFT as peer.

Each method trains the same Llama shape on the same batches (forward, backward, AdamW
step) in a fresh subprocess, so that its peak memory is its own:
  - full:  every weight trainable (fp32 weights, gradients and two AdamW moments);
  - lora:  frozen fp32 base, adapters on q,k,v,o,gate,up,down (r=16, alpha=32);
  - qlora: the base's block projections in NF4 with double quantisation (our
           `Linear4bit`), the same adapters in fp32;
  - peft-lora (peer): transformers' LlamaForCausalLM of the same shape with PEFT's LoRA
           (same r, alpha, targets), the same optimiser and batches.
Reported per method: trainable parameters and their share, the bytes of weights +
gradients + optimizer state (counted from the tensors), the peak memory of the process
during training (CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS (VmHWM, reset once
the model is built) above the RSS right after imports), and the median step time. Token ids are random: neither memory nor time depends
on their values. Ratios are against full fine-tuning, and ours/PEFT for LoRA.

    python benchmarks/bench_finetune.py                  # CPU, a 118M-parameter model, fp32
    python benchmarks/bench_finetune.py --gpu            # CUDA, a 1.3B-parameter model, bf16 autocast
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHAPES = {
    # weights, not activations, dominate here: the regime fine-tuning memory is about
    "cpu": dict(n_layer=8, n_head=8, d_model=1024, seq_len=128, vocab_size=8192, batch=1, steps=3),
    "gpu": dict(n_layer=24, n_head=16, d_model=2048, seq_len=1024, vocab_size=32000, batch=2, steps=10),
}
METHODS = ("full", "lora", "qlora", "peft-lora")
RANK, ALPHA = 16, 32


def proc_status(key: str) -> int:
    """A byte figure of /proc/self/status (VmRSS: resident now; VmHWM: peak since reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak_rss() -> None:
    """Restart VmHWM from the current RSS (Linux >= 4.0), so building the model (a QLoRA
    base exists in fp32 until it is quantised) does not count as training memory."""
    Path("/proc/self/clear_refs").write_text("5")


def state_bytes(model, optimizer) -> int:
    """Weights (parameters and buffers, e.g. NF4 codes) + gradients + optimizer state."""
    import torch

    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    total += sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def run_one(method: str, shape: dict, gpu: bool) -> dict:
    """Train `steps` steps with `method`; called in a fresh subprocess."""
    import gc

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mlscale.config import from_dict
    from mlscale.finetune.config import FinetuneConfig
    from mlscale.finetune.task import prepare_model
    from mlscale.model.llama import LlamaConfig
    from mlscale.model.lora import count_parameters
    from mlscale.model.registry import get_family
    from mlscale.runtime.device import autocast, synchronize
    from mlscale.train.optimizer import build_optimizer

    if method == "peft-lora":
        import peft  # noqa: F401  (imported before the baseline, like torch)
        import transformers  # noqa: F401
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    baseline_rss = proc_status("VmRSS")
    mc = LlamaConfig(n_layer=shape["n_layer"], n_head=shape["n_head"], d_model=shape["d_model"],
                     seq_len=shape["seq_len"], vocab_size=shape["vocab_size"], tie_embeddings=False)
    mc.validate()
    targets = ["q", "k", "v", "o", "gate", "up", "down"]
    cfg = from_dict(FinetuneConfig, {"method": "lora" if method == "peft-lora" else method,
                                     "lora": {"r": RANK, "alpha": ALPHA, "targets": targets},
                                     "train": {"weight_decay": 0.0, "lr": 1e-4, "min_lr": 1e-5}})
    torch.manual_seed(0)
    if method == "peft-lora":
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaConfig, LlamaForCausalLM

        hf_cfg = LlamaConfig(vocab_size=mc.vocab_size, hidden_size=mc.d_model, intermediate_size=mc.ffn_hidden,
                             num_hidden_layers=mc.n_layer, num_attention_heads=mc.n_head,
                             num_key_value_heads=mc.kv_heads, max_position_embeddings=mc.seq_len,
                             tie_word_embeddings=False)
        hf_cfg._attn_implementation = "sdpa"
        with device:
            model = get_peft_model(LlamaForCausalLM(hf_cfg), LoraConfig(
                r=RANK, lora_alpha=ALPHA, target_modules=[f"{t}_proj" for t in targets]))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())

        def loss_of(x, y):
            return model(input_ids=x, labels=None).logits.float().flatten(0, 1).log_softmax(-1) \
                .gather(-1, y.flatten()[:, None]).mean().neg()
    else:
        family = get_family("llama")
        with device:  # built where it trains; quantised there for qlora
            base = family.build(mc)
            family.fuse_cpu(base)  # as the trainer: the fused CPU modules, before the adapters
            model = prepare_model(base, cfg)
        trainable, total = count_parameters(model)

        def loss_of(x, y):
            return model(x, y)[1]
    model.train()
    optimizer = build_optimizer(model, cfg.train)
    g = torch.Generator().manual_seed(1)
    B, T = shape["batch"], shape["seq_len"]
    times, cpu_times = [], []
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    for step in range(shape["steps"] + 1):  # the first step warms up (allocator, kernels)
        ids = torch.randint(0, mc.vocab_size, (B, T + 1), generator=g).to(device)
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast(device, dtype):
            loss = loss_of(ids[:, :-1], ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    out = {"method": method, "trainable": trainable, "total": total, "share": trainable / total,
           "state_bytes": state_bytes(model, optimizer), "step_s": statistics.median(times),
           "step_cpu_s": statistics.median(cpu_times),
           "tokens_per_s": B * T / statistics.median(times), "loss": float(loss)}
    if gpu:
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
        out["device"] = torch.cuda.get_device_name()
    else:
        out["peak_bytes"] = proc_status("VmHWM") - baseline_rss
        out["device"] = "cpu"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="run on CUDA with the larger shape")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, help="timed steps per method (after one warm-up step)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = dict(SHAPES["gpu" if args.gpu else "cpu"])
    if args.steps:
        shape["steps"] = args.steps
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, shape, args.gpu)))
        return
    results = {}
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", method] + (["--gpu"] if args.gpu else []) \
            + (["--steps", str(args.steps)] if args.steps else []) \
            + (["--threads", str(args.threads)] if args.threads else [])
        # a fixed mmap threshold makes glibc hand freed tensors back to the OS, so the RSS of
        # a method is what it holds, not what an earlier allocation left mapped
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{method}: failed\n{proc.stderr[-2000:]}")
            continue
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    if not results:
        sys.exit(1)
    any_r = next(iter(results.values()))
    print(f"\nshape {shape} on {any_r['device']}, r={RANK}, alpha={ALPHA}, "
          f"{'bf16 autocast' if args.gpu else 'fp32'}")
    # on a shared CPU, wall time follows the machine's load; the CPU time of this process
    # (one thread with --threads 1) is the steadier measure of the work itself
    print("| method | trainable | share | weights+grads+optimizer | peak memory | step time | step CPU time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m, r in results.items():
        print(f"| {m} | {r['trainable'] / 1e6:.2f}M | {100 * r['share']:.2f}% | {r['state_bytes'] / 2**20:.0f} MiB "
              f"| {r['peak_bytes'] / 2**20:.0f} MiB | {r['step_s']:.3f} s | {r['step_cpu_s']:.3f} s |")
    if "full" in results:
        full = results["full"]
        for m in ("lora", "qlora"):
            if m in results:
                r = results[m]
                print(f"{m} vs full: peak memory x{r['peak_bytes'] / full['peak_bytes']:.2f}, "
                      f"state x{r['state_bytes'] / full['state_bytes']:.2f}, "
                      f"step time x{r['step_s'] / full['step_s']:.2f} (CPU time x{r['step_cpu_s'] / full['step_cpu_s']:.2f})")
    if "lora" in results and "peft-lora" in results:
        a, b = results["lora"], results["peft-lora"]
        print(f"ours/PEFT LoRA: peak memory x{a['peak_bytes'] / b['peak_bytes']:.2f}, "
              f"step time x{a['step_s'] / b['step_s']:.2f}, CPU time x{a['step_cpu_s'] / b['step_cpu_s']:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
