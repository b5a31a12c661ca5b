"""Self-supervised pretraining: mlscale's simclr and dino tasks against lightly's, side by side.

Both sides train the same backbone (mlscale's ViT at the preset's shape, from the same
seed), with the same views (crop scales, jitter, blur, solarisation, flips, local crops),
batch, optimizer (AdamW, same lr schedule, weight decay, clipping) and number of steps,
on the train split of an `mlscale images` directory. lightly's side is what its examples
do: its transforms (SimCLRTransform / DINOTransform, PIL per image) in a torch DataLoader,
its heads (SimCLRProjectionHead, DINOProjectionHead), losses (NTXentLoss, DINOLoss), EMA
helpers (update_momentum, cosine_schedule) and last-layer freezing. Ours is `mlscale
train` with the preset. Reported per method: training images/s (wall time of the steps,
data loading included) and the k-NN probe top-1 (k=20, T=0.07, whole train split as the
bank, val split classified) of each backbone (DINO: the teacher's), and the ratios.
Targets: probe within 1 point of lightly's or above, images/s >= lightly's.

lightly imports torchvision, which does not load beside the CPU torch wheel:
    make bench-ssl          # .bench/venv-timm: torch 2.14.1 + torchvision 0.29.1 + timm + lightly
    python benchmarks/bench_ssl.py fm [--methods simclr dino] [--steps 150] [--batch 256]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mlscale.config import from_dict  # noqa: E402
from mlscale.images.data import ImageData  # noqa: E402
from mlscale.model.registry import family_of  # noqa: E402
from mlscale.runtime import Runtime  # noqa: E402
from mlscale.tasks.selfsup import probe  # noqa: E402
from mlscale.tasks.selfsup.base import backbone_config, feature_dim  # noqa: E402
from mlscale.train.config import load_preset  # noqa: E402
from mlscale.train.schedule import lr_at, wd_at  # noqa: E402
from mlscale.train.task import get_task  # noqa: E402


def settings(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The preset's settings at the benchmark's batch and number of steps."""
    s = load_preset(f"{method}-fashion-mnist")
    s.pop("task", None)
    s["train"].update(batch_size=args.batch, max_steps=args.steps, eval_every=0, checkpoint_every=0,
                      log_every=25, threads=args.threads, warmup_steps=min(s["train"]["warmup_steps"], args.steps // 5))
    return s


# ----------------------------------------------------------------------------- ours
def run_ours(method: str, args: argparse.Namespace, data: Path) -> tuple[torch.nn.Module, float]:
    """Train with `mlscale train`'s task and trainer; (backbone kept, images/s of the steps)."""
    from mlscale.train.trainer import Trainer

    cls = get_task(method)
    cfg = cls.make_config(settings(method, args))
    task = cls(cfg, data, Runtime(device=torch.device("cpu"), dtype=torch.float32))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(task, Path(out) / "run")
        trainer.fit()
        seconds = sum(trainer.step_seconds)  # the steps (batches drawn inside), not the k-NN evaluations
        backbone = task.evaluated_backbone(trainer.model)
    return backbone, args.steps * args.batch / seconds


# --------------------------------------------------------------------------- lightly
class Pictures(torch.utils.data.Dataset):
    """The train split as PIL images through a lightly transform (what its examples do)."""

    def __init__(self, images: Any, transform: Any):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        x = np.asarray(self.images[i])
        pic = Image.fromarray(x[..., 0], mode="L") if x.shape[-1] == 1 else Image.fromarray(x, mode="RGB")
        return self.transform(pic)


def lightly_transform(method: str, cfg: Any, mean: list[float], std: list[float]) -> Any:
    from lightly.transforms import DINOTransform, SimCLRTransform

    v, norm = cfg.views, {"mean": mean, "std": std}
    common = dict(hf_prob=0.5 if v.flip else 0.0, vf_prob=0.0, rr_prob=0.0, cj_prob=v.jitter_prob, cj_strength=1.0,
                  cj_bright=v.brightness, cj_contrast=v.contrast, cj_sat=v.saturation, cj_hue=0.0,
                  random_gray_scale=v.gray_prob, sigmas=(v.blur_sigma_min, v.blur_sigma_max), normalize=norm)
    if method == "simclr":
        return SimCLRTransform(input_size=cfg.model.image_size, min_scale=v.min_scale, gaussian_blur=v.blur_prob,
                               **common)
    d, local = cfg.dino, cfg.local_views
    return DINOTransform(global_crop_size=cfg.model.image_size, global_crop_scale=(v.min_scale, v.max_scale),
                         local_crop_size=local.size, local_crop_scale=(local.min_scale, local.max_scale),
                         n_local_views=d.local_crops, gaussian_blur=(d.first_blur, d.second_blur, local.blur_prob),
                         solarization_prob=d.second_solarize, **common)


def lightly_heads(method: str, cfg: Any) -> tuple[torch.nn.Module, Any]:
    from lightly.loss import DINOLoss, NTXentLoss
    from lightly.models.modules import DINOProjectionHead, SimCLRProjectionHead

    width = feature_dim(cfg.model)
    if method == "simclr":
        s = cfg.simclr
        return SimCLRProjectionHead(width, s.hidden or width, s.out_dim), NTXentLoss(temperature=s.temperature)
    d = cfg.dino
    head = DINOProjectionHead(width, d.hidden, d.bottleneck, d.out_dim, freeze_last_layer=1)
    loss = DINOLoss(output_dim=d.out_dim, warmup_teacher_temp=d.warmup_teacher_temp, teacher_temp=d.teacher_temp,
                    warmup_teacher_temp_epochs=max(d.warmup_teacher_temp_steps, 1), student_temp=d.student_temp,
                    center_momentum=d.center_momentum)
    return head, loss


def run_lightly(method: str, args: argparse.Namespace, data: Path) -> tuple[torch.nn.Module, float]:
    """lightly's transforms, heads, loss and EMA around the same backbone and optimizer."""
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    cls = get_task(method)
    cfg = cls.make_config(settings(method, args))
    t = cfg.train
    images = ImageData(data)
    split = images.split("train")
    from mlscale.tasks.classify import channel_stats

    mean, std = channel_stats(split.images)
    torch.manual_seed(t.seed)
    backbone = family_of(cfg.model).build(backbone_config(cfg.model))
    head, criterion = lightly_heads(method, cfg)
    student = torch.nn.ModuleDict({"backbone": backbone, "head": head})
    teacher = None
    if method == "dino":  # lightly's example: a copy of the backbone, a head built again (its
        # weight-normalised layer cannot be deep-copied), here starting from the student's weights
        teacher = torch.nn.ModuleDict({"backbone": copy.deepcopy(backbone), "head": lightly_heads(method, cfg)[0]})
        teacher["head"].load_state_dict(head.state_dict())
        deactivate_requires_grad(teacher)
    decay = [p for n, p in student.named_parameters() if p.dim() >= 2 and not n.endswith(("pos_embed", "cls_token"))]
    rest = [p for n, p in student.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    loader = torch.utils.data.DataLoader(Pictures(split.images, lightly_transform(method, cfg, mean, std)),
                                         batch_size=t.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    steps_per_epoch = len(loader)
    step, t0 = 0, time.perf_counter()
    while step < t.max_steps:
        for views in loader:
            if step == t.max_steps:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, t)
                if g["weight_decay"] > 0 and t.weight_decay_end >= 0:
                    g["weight_decay"] = wd_at(step, t)
            if method == "simclr":
                z = [student["head"](student["backbone"].features(v)) for v in views]
                loss = criterion(z[0], z[1])
            else:
                m = cosine_schedule(step, t.max_steps, cfg.dino.momentum_teacher, 1.0)
                update_momentum(student, teacher, m)
                with torch.no_grad():
                    t_out = [teacher["head"](teacher["backbone"].features(v)) for v in views[:2]]
                s_out = [student["head"](student["backbone"].features(v)) for v in views]
                loss = criterion(t_out, s_out, epoch=step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if method == "dino":
                student["head"].cancel_last_layer_gradients(step // steps_per_epoch)
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(student.parameters(), t.grad_clip)
            opt.step()
            step += 1
            if step % 25 == 0:
                print(f"  lightly {method} step {step}/{t.max_steps} loss {float(loss):.4f}", flush=True)
    seconds = time.perf_counter() - t0
    kept = teacher if teacher is not None else student
    return kept["backbone"], t.max_steps * t.batch_size / seconds


def knn(backbone: torch.nn.Module, data: Path) -> float:
    """The k-NN probe of `mlscale evaluate --probe knn`: train split as bank, val classified."""
    images = ImageData(data)
    train, val = images.split("train"), images.split("val")
    from mlscale.tasks.classify import channel_stats

    mean, std = channel_stats(train.images)
    rt = Runtime(device=torch.device("cpu"), dtype=torch.float32)
    bank, queries = probe.features(backbone, train.images, mean, std, rt), probe.features(backbone, val.images, mean, std, rt)
    return probe.knn_top1(bank, torch.as_tensor(train.labels), queries, torch.as_tensor(val.labels), images.num_classes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="an `mlscale images` directory (e.g. of Fashion-MNIST)")
    ap.add_argument("--methods", nargs="+", default=["simclr", "dino"], choices=("simclr", "dino"))
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps on each side")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch threads on each side")
    ap.add_argument("--workers", type=int, default=1, help="lightly's DataLoader workers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for method in args.methods:
        row = {}
        for who, run in (("lightly", run_lightly), ("mlscale", run_ours)):
            print(f"{method}: training {who} for {args.steps} steps of {args.batch}", flush=True)
            backbone, rate = run(method, args, args.data)
            row[who] = {"images_per_s": round(rate, 1), "knn_top1": round(knn(backbone.eval(), args.data), 4)}
        row["images_per_s_ratio"] = round(row["mlscale"]["images_per_s"] / row["lightly"]["images_per_s"], 2)
        row["knn_top1_difference"] = round(row["mlscale"]["knn_top1"] - row["lightly"]["knn_top1"], 4)
        results[method] = row
    print(json.dumps({"steps": args.steps, "batch": args.batch, "threads": args.threads, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
