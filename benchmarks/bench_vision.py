"""Training throughput: mlscale's ViT against timm's VisionTransformer of the same shape.

Both models are built at one shape (default: what `mlscale train --task classify` builds,
a ViT for 28x28 grey images, 4-pixel patches, width 192, 6 blocks of 3 heads, 10 classes),
the same weights are loaded into timm's (through mlscale.model.vit.timm, so the logits
are checked equal first: a real parity check against timm), and one training step
(forward, cross entropy, backward, AdamW; ours with the modules the trainer swaps in,
vit/fused.py) of each is alternated in one process, so both
see the same machine load. Medians of per-step times; the ratio ours / timm in images/s
(target >= 1.0 on CPU). Peak memory of each is measured in a fresh subprocess: the peak
RSS while training, above the RSS after a warm-up step on a miniature.

timm imports torchvision, which does not load beside the CPU torch wheel; run this in
an environment with the CUDA pair (it runs on the CPU too):
    make bench-vision        # creates .bench/venv-timm: torch 2.14.1 + torchvision 0.29.1 + timm
    python benchmarks/bench_vision.py [--batch 128] [--width 192 --depth 6 --heads 3]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_train import peak_rss_mb, reset_peak_rss  # noqa: E402
from mlscale.model.registry import get_family  # noqa: E402
from mlscale.model.vit import ViTConfig  # noqa: E402
from mlscale.model.vit.timm import timm_kwargs, timm_state_dict  # noqa: E402

WHO = {"ours": "mlscale ViT", "timm": "timm VisionTransformer"}


def config(args: argparse.Namespace) -> ViTConfig:
    cfg = ViTConfig(image_size=args.size, patch_size=args.patch, in_channels=args.channels,
                    num_classes=10, d_model=args.width, n_layer=args.depth, n_head=args.heads)
    cfg.validate()
    return cfg


def build(which: str, cfg: ViTConfig) -> nn.Module:
    """Our model from seed 0 with the family's fused modules swapped in, as the trainer
    does; or timm's holding exactly its weights."""
    torch.manual_seed(0)
    family = get_family("vit")
    ours = family.build(cfg)
    if which == "ours":
        family.fuse_cpu(ours)
        return ours
    from timm.models.vision_transformer import VisionTransformer

    theirs = VisionTransformer(**timm_kwargs(cfg))
    theirs.load_state_dict(timm_state_dict(ours))
    return theirs


def images(cfg: ViTConfig, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    return x, torch.randint(0, cfg.num_classes, (batch,), generator=g)


def make_step(model: nn.Module):
    """Forward, cross entropy, backward, AdamW: the same for both models."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def check_parity(cfg: ViTConfig) -> float:
    """Largest logit difference between ours and timm's on the same weights."""
    ours, theirs = build("ours", cfg).eval(), build("timm", cfg).eval()
    x, _ = images(cfg, 8, 123)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    if diff > 1e-5:
        raise SystemExit(f"logits differ from timm's by {diff:.2e}: the comparison would not be of one model")
    return diff


def memory_child(which: str, args: argparse.Namespace) -> None:
    """In a fresh process: peak RSS of training `which`, above the warmed-up baseline."""
    cfg = config(args)
    mini = ViTConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels,
                     d_model=cfg.n_head * 8, n_layer=1, n_head=cfg.n_head)
    make_step(build(which, mini))(*images(mini, 2, 0))  # imports, thread pools, kernel libraries
    gc.collect()
    base = reset_peak_rss()
    step = make_step(build(which, cfg))
    for i in range(3):
        step(*images(cfg, args.batch, i))
    print(json.dumps({"peak_mb": peak_rss_mb() - base}))


def measure_memory(which: str) -> float | None:
    out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--memory-of", which],
                         capture_output=True, text=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)["peak_mb"]
    print(f"memory measurement of {which} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
    return None


def bench(args: argparse.Namespace) -> float:
    cfg = config(args)
    diff = check_parity(cfg)
    models = {w: build(w, cfg) for w in WHO}
    n = {w: sum(p.numel() for p in m.parameters()) for w, m in models.items()}
    assert n["ours"] == n["timm"], f"shapes differ: {n}"
    steps = {w: make_step(m) for w, m in models.items()}
    for w in WHO:
        for i in range(args.warmup):
            steps[w](*images(cfg, args.batch, i))
    times: dict[str, list[float]] = {w: [] for w in WHO}
    for r in range(args.rounds):
        for w in (list(WHO) if r % 2 == 0 else list(reversed(list(WHO)))):  # alternate who goes first
            for i in range(args.steps):
                x, y = images(cfg, args.batch, 1000 + r * args.steps + i)
                t0 = time.perf_counter()
                steps[w](x, y)
                times[w].append(time.perf_counter() - t0)
    med = {w: statistics.median(t) for w, t in times.items()}
    mem = {w: measure_memory(w) for w in WHO}
    ratio = med["timm"] / med["ours"]
    print(f"\n## ViT training step on CPU: {cfg.image_size}x{cfg.image_size}x{cfg.in_channels} images, "
          f"patch {cfg.patch_size}, width {cfg.d_model}, {cfg.n_layer} blocks of {cfg.n_head} heads, "
          f"batch {args.batch}, fp32, eager, {torch.get_num_threads()} threads, {n['ours'] / 1e6:.2f}M "
          f"parameters, torch {torch.__version__}\n")
    print(f"logits of the two on the same weights differ by at most {diff:.1e}\n")
    print("| model | median step (ms) | images/s | peak memory (MB) |")
    print("|---|---:|---:|---:|")
    for w in WHO:
        m = f"{mem[w]:.0f}" if mem[w] is not None else "n/a"
        print(f"| {WHO[w]} | {med[w] * 1e3:.1f} | {args.batch / med[w]:,.0f} | {m} |")
    print(f"\nimages/s of mlscale over timm: **{ratio:.2f}x** (target >= 1.0); "
          f"{args.rounds} rounds x {args.steps} steps each, medians")
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--memory-of", choices=list(WHO), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        memory_child(args.memory_of, args)
        return 0
    bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
