"""Activation memory and step time with and without activation checkpointing.

    python benchmarks/bench_memory.py [--layers 6 --width 384 --seq 256 --batch 8 --repeats 5]

Activation memory is measured exactly, on any device: the bytes of every tensor storage
created during the forward pass and still alive when it returns (what backward will
need). On CUDA the peak allocated memory of a whole step is reported too. Step time is
the median of alternated repeats of forward + backward + AdamW, all modes in one process.
Target (issue 5): >= 40% less activation memory for <= 35% more time.
"""
from __future__ import annotations

import argparse
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mlscale.model.llama import Llama, LlamaConfig
from mlscale.model.registry import get_family
from mlscale.train.parallel import apply_activation_checkpointing


class LiveStorages(TorchDispatchMode):
    """Remembers every tensor produced inside the mode; `bytes_alive()` sums the distinct
    storages among them that are still referenced."""

    def __init__(self):
        super().__init__()
        self.refs: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.refs.append(weakref.ref(t))
        return out

    def bytes_alive(self) -> int:
        seen, total = set(), 0
        for r in self.refs:
            t = r()
            if t is None:
                continue
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
        return total


def build(args, mode: str, device: torch.device) -> tuple[Llama, torch.optim.Optimizer]:
    torch.manual_seed(0)
    cfg = LlamaConfig(n_layer=args.layers, n_head=args.width // 64, d_model=args.width,
                      seq_len=args.seq, vocab_size=args.vocab)
    cfg.validate()
    family = get_family("llama")
    model = family.build(cfg)
    family.fuse_cpu(model)  # as the trainer does, before activation checkpointing
    model = model.to(device)
    apply_activation_checkpointing(family.blocks(model), mode)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def activation_bytes(model: Llama, x: torch.Tensor, y: torch.Tensor) -> int:
    with LiveStorages() as mode:
        _, loss = model(x, y)
    n = mode.bytes_alive()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return n


def step(model, opt, x, y) -> None:
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
    y = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)

    modes = ["none", "selective", "full"]
    models = {m: build(args, m, device) for m in modes}
    act = {m: activation_bytes(models[m][0], x, y) for m in modes}
    peak = {}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes:  # warm-up (and CUDA peak per mode)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step(*models[m], x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak[m] = torch.cuda.max_memory_allocated()
    for _ in range(args.repeats):  # alternate the modes so machine noise hits all alike
        for m in modes:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(*models[m], x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[m].append(time.perf_counter() - t0)

    base_t, base_a = statistics.median(times["none"]), act["none"]
    print(f"\nActivation checkpointing, {args.layers} layers x width {args.width}, context {args.seq}, "
          f"batch {args.batch}, {device.type}, median of {args.repeats}\n")
    head = "| mode | activation memory (MiB) | vs none | step time (s) | vs none |"
    if peak:
        head += " peak step memory (MiB) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for m in modes:
        t = statistics.median(times[m])
        row = (f"| {m} | {act[m] / 2**20:.1f} | {act[m] / base_a - 1:+.0%} | {t:.3f} | "
               f"{t / base_t - 1:+.0%} |")
        if peak:
            row += f" {peak[m] / 2**20:.0f} |"
        print(row)


if __name__ == "__main__":
    main()
