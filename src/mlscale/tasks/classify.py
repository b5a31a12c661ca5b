"""Supervised image classification: the `classify` task on the shards of `mlscale images`.

A micro-batch takes rows of the train split in seeded epoch permutations (train/
sampling.py), augments them as one tensor batch (random crop with zero padding, left-right
flips where the dataset allows them, mixup / CutMix with soft targets; tasks/augment.py)
and minimises cross entropy with label smoothing. Every random draw comes from
(train.seed, micro-batch index), so resumed runs and runs on several ranks see exactly
the images one process sees. With `classify.ema` the task keeps an exponential moving
average of the weights (checkpointed with the run) and evaluates it. Evaluation: top-1
and top-5 accuracy and the loss on the val split; throughput in images/s.

    RUN/classes.json       the class names (index = label)
    RUN/preprocess.json    image shape, per-channel mean and std of the train split
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlscale.artifacts import atomic_write_json, fingerprint_obj, read_json
from mlscale.config import option
from mlscale.errors import ConfigError, InputError
from mlscale.runtime import Runtime
from mlscale.runtime.device import autocast
from mlscale.tasks import augment
from mlscale.train.config import ImageDataConfig, ParallelConfig, TrainConfig, model_config_class
from mlscale.train.data import data_config_class
from mlscale.train.sampling import epoch_order
from mlscale.train.task import Task, register_task

PREPROCESS = "preprocess.json"
CLASSES = "classes.json"


@dataclass
class ClassifyOptions:
    label_smoothing: float = option(0.1, "cross-entropy label smoothing", min=0.0, max=1.0)
    crop_padding: int = option(2, "random crop: pad by this many zero pixels, crop back (0 = off)", min=0)
    flip: bool = option(True, "random left-right flips (turn off for data where mirroring "
                        "changes the class, e.g. digits)")
    mixup: float = option(0.0, "mixup Beta(alpha, alpha) parameter; 0 = off", min=0.0)
    cutmix: float = option(0.0, "CutMix Beta(alpha, alpha) parameter; 0 = off", min=0.0)
    mix_prob: float = option(1.0, "share of micro-batches mixed when mixup or cutmix is on", min=0.0, max=1.0)
    switch_prob: float = option(0.5, "with both on: share of mixed batches that use CutMix", min=0.0, max=1.0)
    ema: float = option(0.0, "decay of an exponential moving average of the weights, evaluated "
                        "instead of them (e.g. 0.999); 0 = off", min=0.0, max=1.0)
    eval_batch_size: int = option(256, "images per forward pass in evaluation", min=1)


def _default_model() -> Any:
    return model_config_class("vit")()


@dataclass
class ClassifyConfig:
    """Everything `mlscale train --task classify` is configured by; saved as RUN/config.json."""

    model: Any = option(default_factory=_default_model, help="model family and shape",
                        select=("family", model_config_class))
    data: Any = option(default_factory=ImageDataConfig, help="the training images",
                       select=("kind", data_config_class))
    classify: ClassifyOptions = option(default_factory=ClassifyOptions, help="loss and augmentation")
    train: TrainConfig = option(default_factory=TrainConfig, help="optimisation")
    parallel: ParallelConfig = option(default_factory=ParallelConfig,
                                      help="data / tensor parallelism across torchrun ranks")


def channel_stats(images: Any, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images [N, H, W, C], in [0, 1] units."""
    total = squares = 0.0
    count = 0
    for start in range(0, len(images), chunk):
        x = np.asarray(images[start:start + chunk], dtype=np.float64) / 255
        total = total + x.sum(axis=(0, 1, 2))
        squares = squares + (x * x).sum(axis=(0, 1, 2))
        count += x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 1e-12))
    return [float(m) for m in mean], [float(s) for s in std]


def check_model_fits(model_cfg: Any, shape: tuple[int, int, int], classes: list[str]) -> None:
    """The model's input and output must match the images: size, channels, classes."""
    H, W, C = shape
    expect = {"num_classes": len(classes), "in_channels": C, "image_size": H}
    wrong = [f"model.{k}={getattr(model_cfg, k)} but the data has {v}" for k, v in expect.items()
             if hasattr(model_cfg, k) and getattr(model_cfg, k) != v]
    if H != W:
        wrong.append(f"the images are {H}x{W}; the model takes square images")
    if wrong:
        fix = " ".join(f"--model.{k}={v}" for k, v in expect.items())
        raise ConfigError("; ".join(wrong) + f" (set {fix})")


@register_task
class Classify(Task):
    """Cross entropy with label smoothing on augmented images; top-1/top-5 on val."""

    name = "classify"
    config_cls = ClassifyConfig
    unit = "image"
    data_kinds = ("images",)
    run_marker = PREPROCESS

    @classmethod
    def load_run(cls, run_dir: Path, step: int | None = None, device: Any = "cpu") -> Any:
        return load_classifier(run_dir, step, device)

    @classmethod
    def evaluate_run(cls, run_dir: Path, data: Path | None = None, split: str = "val",
                     step: int | None = None, device: Any = "cpu") -> dict[str, Any]:
        return evaluate_classifier(run_dir, data, split, step, device)

    def __init__(self, cfg: ClassifyConfig, data: Path, runtime: Runtime, base: Path | None = None):
        from mlscale.images.data import ImageData

        super().__init__(cfg, data, runtime, base)
        self.images = ImageData(data)
        self.train_split = self.images.split(cfg.data.train_split)
        if len(self.train_split) == 0:
            raise InputError(f"{data}: the {cfg.data.train_split} split has no images")
        if int(self.train_split.labels.min()) < 0:
            raise InputError(f"{data}: the {cfg.data.train_split} split has unlabelled images "
                             "(label -1); classify needs a label for every image")
        val = self.images.split(cfg.data.val_split)
        self.val_split = val if len(val) and cfg.data.val_split != cfg.data.train_split else None
        check_model_fits(cfg.model, self.images.shape, self.images.classes)
        self.mean, self.std = channel_stats(self.train_split.images)
        manifest = read_json(Path(data) / "manifest.json")
        self._inputs = {"images": fingerprint_obj({k: manifest.get(k) for k in ("splits", "shape", "classes")})}
        self.ema: dict[str, Tensor] | None = None
        self._loaded_ema: dict[str, Tensor] = {}

    def inputs(self) -> dict[str, str]:
        return self._inputs

    def on_start(self, model: nn.Module, out_dir: Path) -> None:
        if self.runtime.is_main:
            atomic_write_json(out_dir / CLASSES, self.images.classes)
            atomic_write_json(out_dir / PREPROCESS, {"shape": list(self.images.shape), "mean": self.mean,
                                                      "std": self.std})
        if self.cfg.classify.ema > 0:
            self.ema = {n: self._ema_start(p, self._loaded_ema.get(n))
                        for n, p in model.named_parameters() if p.requires_grad}

    @staticmethod
    def _ema_start(param: Tensor, saved: Tensor | None) -> Tensor:
        """The average's starting value: the checkpoint's (sharded like the parameter
        under FSDP or tensor parallelism) or the parameter itself."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if saved is None:
            return param.detach().clone()
        if isinstance(param, DTensor):
            return distribute_tensor(saved.to(param.device), param.device_mesh, param.placements)
        return saved.to(param.device).clone()

    # -- batches -------------------------------------------------------------------------
    def _augmented(self, rows: np.ndarray, crops: np.ndarray, flips: np.ndarray) -> Tensor:
        order = np.argsort(rows)  # memory-mapped shards read faster in order
        x = np.empty((len(rows), *self.images.shape), dtype=np.uint8)
        x[order] = self.train_split.images[rows[order]]
        out = augment.to_float(x, self.mean, self.std, self.runtime.device)
        out = augment.random_crop(out, self.cfg.classify.crop_padding, crops)
        return augment.random_flip(out, flips) if self.cfg.classify.flip else out

    def batch(self, index: int) -> dict[str, Tensor]:
        """This rank's share of global micro-batch `index`: rows, crops, flips and the mix
        are drawn for the whole global batch, so any number of ranks sees the same images."""
        c, t, env = self.cfg.classify, self.cfg.train, self.runtime.env
        size = t.batch_size * env.dp_size
        rows = epoch_order(len(self.train_split), size, t.seed, index)
        rng = np.random.default_rng([t.seed, index, 0x1A6E])
        crops = rng.integers(0, 2 * c.crop_padding + 1, size=(size, 2))
        flips = rng.random(size) < 0.5
        mine = np.arange(env.dp_rank * t.batch_size, (env.dp_rank + 1) * t.batch_size)
        x = self._augmented(rows[mine], crops[mine], flips[mine])
        labels = torch.as_tensor(self.train_split.labels[rows[mine]], device=x.device)
        target: Tensor = labels
        mixed = (c.mixup > 0 or c.cutmix > 0) and rng.random() < c.mix_prob
        if mixed:
            use_cutmix = c.cutmix > 0 and (c.mixup == 0 or rng.random() < c.switch_prob)
            lam = float(rng.beta(c.cutmix, c.cutmix) if use_cutmix else rng.beta(c.mixup, c.mixup))
            partner = size - 1 - mine  # the global batch reversed, as timm's Mixup pairs images
            xp = self._augmented(rows[partner], crops[partner], flips[partner])
            if use_cutmix:
                x, lam = augment.cutmix(x, xp, augment.cutmix_box(x.shape[2], x.shape[3], lam, rng))
            else:
                x = augment.mixup(x, xp, lam)
            n = self.images.num_classes
            partner_labels = torch.as_tensor(self.train_split.labels[rows[partner]], device=x.device)
            target = augment.mixup(augment.one_hot(labels, n), augment.one_hot(partner_labels, n), lam)
        return {"x": x, "target": target, "labels": labels}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        with autocast(self.runtime.device, self.runtime.dtype):
            logits = model(batch["x"])
        loss = F.cross_entropy(logits.float(), batch["target"], label_smoothing=self.cfg.classify.label_smoothing)
        return loss, {"accuracy": float((logits.argmax(-1) == batch["labels"]).float().mean())}

    def units(self, batch: dict[str, Tensor]) -> int:
        return batch["x"].shape[0]

    # -- EMA of the weights ----------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        if self.ema is None:
            return
        decay = self.cfg.classify.ema
        for name, p in model.named_parameters():
            if name in self.ema:
                self.ema[name].lerp_(p.detach(), 1 - decay)

    def tensors(self) -> dict[str, Tensor]:
        from torch.distributed.tensor import DTensor

        if self.ema is None:
            return {}
        return {f"ema.{n}": (t.full_tensor() if isinstance(t, DTensor) else t) for n, t in self.ema.items()}

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """A checkpoint's EMA weights; `on_start` (which runs after it) puts them in place."""
        self._loaded_ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}

    @contextlib.contextmanager
    def evaluated_weights(self, model: nn.Module) -> Iterator[None]:
        """The EMA weights in `model` for the duration (the trained ones when EMA is off)."""
        from mlscale.train.checkpoint import unwrap_model

        if self.ema is None:
            yield
            return
        params = dict(unwrap_model(model).named_parameters())
        saved = {n: params[n].detach().clone() for n in self.ema}
        with torch.no_grad():
            for n, t in self.ema.items():
                params[n].copy_(t)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    params[n].copy_(t)

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Top-1 and top-5 accuracy and the loss (no smoothing) on the val split."""
        if self.val_split is None:
            return {}
        was_training = model.training
        model.eval()
        with self.evaluated_weights(model):
            logits, labels = predict(model, self.val_split, self.mean, self.std, self.cfg.classify.eval_batch_size,
                                     self.runtime)
        model.train(was_training)
        return {"val_loss": float(F.cross_entropy(logits, labels)), **accuracy(logits, labels)}


@torch.no_grad()
def predict(model: nn.Module, split: Any, mean: list[float], std: list[float], batch_size: int,
            runtime: Runtime) -> tuple[Tensor, Tensor]:
    """Logits (fp32, CPU) and labels of every image of `split`, in order."""
    outs = []
    for start in range(0, len(split), batch_size):
        x = augment.to_float(split.images[start:start + batch_size], mean, std, runtime.device)
        with autocast(runtime.device, runtime.dtype):
            outs.append(model(x).float().cpu())
    return torch.cat(outs), torch.as_tensor(np.asarray(split.labels))


def accuracy(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy (top-k with k capped at the number of classes)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return {"top1": float((top[:, 0] == labels).float().mean()),
            "top5": float((top == labels[:, None]).any(dim=1).float().mean())}


# ------------------------------------------------------------------------ a finished run
def load_classifier(run_dir: Path, step: int | None = None, device: Any = "cpu") -> Any:
    """The classifier of a run (latest checkpoint or `step`; its EMA weights when it kept
    them), in eval mode, as a `LoadedRun`; `.preprocess` holds mean, std and shape."""
    from safetensors.torch import load_file

    from mlscale.config import from_dict
    from mlscale.model.registry import family_of
    from mlscale.train.checkpoint import CONFIG, LoadedRun, checkpoint_step, load_checkpoint, pick_checkpoint

    run_dir = Path(run_dir)
    cfg = from_dict(ClassifyConfig, read_json(run_dir / CONFIG))
    ckpt = pick_checkpoint(run_dir, step)
    model = family_of(cfg.model).build(cfg.model)
    load_checkpoint(ckpt, model)
    ema = ckpt / "task.safetensors"
    if ema.exists():
        averages = {k[len("ema."):]: v for k, v in load_file(str(ema)).items() if k.startswith("ema.")}
        model.load_state_dict(averages, strict=False)
    loaded = LoadedRun(model=model.to(device).eval(), config=cfg, tokenizer=None,
                       step=checkpoint_step(ckpt), path=ckpt, run_dir=run_dir)
    loaded.preprocess = read_json(run_dir / PREPROCESS)  # type: ignore[attr-defined]
    loaded.classes = read_json(run_dir / CLASSES)  # type: ignore[attr-defined]
    return loaded


def evaluate_classifier(run_dir: Path, data: Path | None = None, split: str = "val", step: int | None = None,
                        device: Any = "cpu", batch_size: int = 256) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy and the confusion matrix of a run on a split; under
    the private key `_predicted` the predicted label of each image of the split, in order
    (for the run report: pop it before printing or saving the figures)."""
    from mlscale.images.data import ImageData
    from mlscale.runtime import Runtime
    from mlscale.runtime.device import resolve_device
    from mlscale.train.checkpoint import run_data_dir

    dev = resolve_device(device) if isinstance(device, str) else device
    loaded = load_classifier(run_dir, step, dev)
    data = Path(data) if data is not None else run_data_dir(run_dir)
    if data is None:
        raise InputError(f"{run_dir} does not record its image directory; pass --data")
    images = ImageData(data)
    if images.classes != loaded.classes:
        raise InputError(f"{data} has other classes than {run_dir} was trained on")
    part = images.split(split)
    if len(part) == 0:
        raise InputError(f"{data}: the {split} split has no images")
    pre = loaded.preprocess
    logits, labels = predict(loaded.model, part, pre["mean"], pre["std"], batch_size,
                             Runtime(device=dev, dtype=torch.float32))
    n = len(loaded.classes)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((labels, logits.argmax(1)), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp_min(1)).tolist()
    return {"run": str(run_dir), "step": loaded.step, "data": str(data), "split": split, "images": len(part),
            **accuracy(logits, labels), "loss": float(F.cross_entropy(logits, labels)),
            "per_class": dict(zip(loaded.classes, [round(a, 4) for a in per_class])),
            "confusion": confusion.tolist(), "_predicted": logits.argmax(1).tolist()}
