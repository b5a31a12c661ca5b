"""What every self-supervised task shares: images without labels in, features out.

A self-supervised task trains a backbone of any registered family (its `features` are
what is kept) with a method's head, on the train split of an `mlscale images` directory,
never reading a label. Labels serve only to watch: a k-NN probe on the val split at
every evaluation (train.eval_every, and at step 0) and the probes of `mlscale evaluate
RUN --probe knn|linear`. The normalised spread of the embeddings is logged every step
and a collapse stops the run (collapse.py).

    RUN/selfsup.json    the method, image shape, per-channel mean and std, class names

The trainer sees one module, backbone + head (`heads.Pretraining`, or MAE's encoder +
decoder), and the family's hooks reach the backbone inside it (`family`).
"""
from __future__ import annotations

import dataclasses
import math
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlscale.artifacts import atomic_write_json, fingerprint_obj, read_json
from mlscale.config import option
from mlscale.errors import ConfigError, InputError
from mlscale.model.registry import ModelFamily
from mlscale.runtime import Runtime
from mlscale.runtime.dist import mean_over_dp_tensor
from mlscale.tasks.classify import channel_stats
from mlscale.tasks.selfsup import probe
from mlscale.tasks.selfsup.collapse import CollapseOptions, CollapseWatch
from mlscale.tasks.selfsup.views import ViewSpec
from mlscale.train.config import ImageDataConfig, ParallelConfig, TrainConfig, model_config_class
from mlscale.train.data import data_config_class
from mlscale.train.task import Task, get_task

MARKER = "selfsup.json"


@dataclass
class MonitorOptions:
    knn_bank: int = option(10000, "k-NN probe during training: labelled train images in its bank "
                           "(labels are read for this probe only); 0 = all", min=0)
    knn_queries: int = option(2000, "k-NN probe during training: val images it classifies; 0 = all", min=0)


@dataclass
class SelfSupervisedConfig:
    """The sections every self-supervised task's config has; each method adds its own."""

    model: Any = option(default_factory=lambda: default_backbone(), help="backbone family and shape "
                        "(model.num_classes is ignored: pretraining has no classifier)",
                        select=("family", model_config_class))
    data: Any = option(default_factory=ImageDataConfig, help="the training images (labels are not read)",
                       select=("kind", data_config_class))
    views: ViewSpec = option(default_factory=ViewSpec, help="how the views of an image are made")
    monitor: MonitorOptions = option(default_factory=MonitorOptions, help="the k-NN probe during training")
    collapse: CollapseOptions = option(default_factory=CollapseOptions, help="collapse detection")
    train: TrainConfig = option(default_factory=TrainConfig, help="optimisation")
    parallel: ParallelConfig = option(default_factory=ParallelConfig, help="data parallelism across ranks")


def spread(embeddings: Tensor) -> Tensor:
    """Mean per-dimension std of the L2-normalised embeddings [N, D], times sqrt(D)."""
    z = F.normalize(embeddings.detach().float(), dim=1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[1])


def default_backbone() -> Any:
    """The `model` section's default: a ViT."""
    return model_config_class("vit")()


def feature_dim(model_cfg: Any) -> int:
    """Width of a backbone's features (its config's `feature_dim`, else `d_model`)."""
    return int(getattr(model_cfg, "feature_dim", None) or model_cfg.d_model)


def backbone_config(model_cfg: Any) -> Any:
    """The backbone's config: the family's, without a classifier."""
    return dataclasses.replace(model_cfg, num_classes=0) if hasattr(model_cfg, "num_classes") else model_cfg


class SelfSupervised(Task):
    """Base of simclr, dino and mae: data, the wrapped family, probes, collapse, loading."""

    unit = "image"
    data_kinds = ("images",)
    run_marker = MARKER
    eval_at_start = True  # the k-NN probe of the random init: the curve's baseline
    views_per_image: ClassVar[int] = 1

    @classmethod
    @abstractmethod
    def build_network(cls, cfg: Any) -> nn.Module:
        """The module the trainer trains (backbone inside), freshly initialised."""

    def __init__(self, cfg: Any, data: Path, runtime: Runtime, base: Path | None = None):
        from mlscale.images.data import ImageData

        super().__init__(cfg, data, runtime, base)
        if cfg.parallel.tp > 1:
            raise ConfigError(f"parallel.tp={cfg.parallel.tp}: {self.name} runs data parallel only (parallel.tp=1)")
        self.images = ImageData(data)
        self.train_split = self.images.split(cfg.data.train_split)
        if len(self.train_split) < 2:
            raise InputError(f"{data}: the {cfg.data.train_split} split has fewer than 2 images")
        val = self.images.split(cfg.data.val_split)
        self.val_split = val if len(val) and cfg.data.val_split != cfg.data.train_split else None
        # labels serve the k-NN probe during training only; it runs when both splits have them
        self.labelled = self.val_split is not None and int(np.min(self.train_split.labels)) >= 0
        H, W, C = self.images.shape
        wrong = [f"model.{k}={getattr(cfg.model, k)} but the images have {v}"
                 for k, v in (("in_channels", C), ("image_size", H)) if getattr(cfg.model, k, v) != v]
        if wrong or H != W:
            raise ConfigError("; ".join(wrong or [f"the images are {H}x{W}; the model takes square images"]))
        self.mean, self.std = channel_stats(self.train_split.images)
        manifest = read_json(Path(data) / "manifest.json")
        self._inputs = {"images": fingerprint_obj({k: manifest.get(k) for k in ("splits", "shape", "classes")})}
        self.watch = CollapseWatch(cfg.collapse, self.name, getattr(getattr(cfg, "dino", None), "out_dim", 0))
        self._stats: Tensor | None = None
        self._stat_names: list[str] = []

    def inputs(self) -> dict[str, str]:
        return self._inputs

    # -- the network and the family seen through it -----------------------------------
    def build_model(self) -> nn.Module:
        torch.manual_seed(self.cfg.train.seed)
        return self.build_network(self.cfg).to(self.runtime.device)

    @property
    def family(self) -> ModelFamily:
        inner = super().family
        return dataclasses.replace(inner, blocks=lambda m: inner.blocks(m.backbone), tp_plan={}, tp_shard=None)

    def flops_per_unit(self, model: nn.Module) -> float:
        """Training FLOPs per image: the backbone on each view, and the head."""
        backbone = model.backbone
        heads = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
        return float(self.views_per_image * (backbone.flops_per_image(self.cfg.model.image_size) + 6 * heads))

    def on_start(self, model: nn.Module, out_dir: Path) -> None:
        if self.runtime.is_main:
            atomic_write_json(out_dir / MARKER, {"method": self.name, "shape": list(self.images.shape),
                                                 "mean": self.mean, "std": self.std,
                                                 "classes": self.images.classes})

    # -- batches ---------------------------------------------------------------------
    def rows(self, index: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """(global batch rows, this rank's positions in it, the micro-batch's generator)."""
        from mlscale.train.sampling import epoch_order

        t, env = self.cfg.train, self.runtime.env
        size = t.batch_size * env.dp_size
        rows = epoch_order(len(self.train_split), size, t.seed, index)
        mine = np.arange(env.dp_rank * t.batch_size, (env.dp_rank + 1) * t.batch_size)
        return rows, mine, np.random.default_rng([t.seed, index, 0x55F])

    def pixels(self, rows: np.ndarray) -> np.ndarray:
        """uint8 images [n, H, W, C] of train rows (read in order: memory-mapped shards)."""
        order = np.argsort(rows)
        x = np.empty((len(rows), *self.images.shape), dtype=np.uint8)
        x[order] = self.train_split.images[rows[order]]
        return x

    def units(self, batch: Any) -> int:
        return self.cfg.train.batch_size

    # -- collapse ----------------------------------------------------------------------
    def keep_stats(self, **stats: Tensor) -> dict[str, float]:
        """Remember this micro-batch's collapse statistics (checked after the update,
        averaged over ranks); returns them as metrics to log."""
        self._stat_names = list(stats)
        self._stats = torch.stack([v.detach().float() for v in stats.values()])
        return {k: float(v) for k, v in stats.items()}

    def after_step(self, model: nn.Module, step: int) -> None:
        if self._stats is None:
            return
        values = mean_over_dp_tensor(self._stats, self.runtime.env).tolist()  # every rank decides alike
        self.watch.update(step, dict(zip(self._stat_names, values)))

    # -- evaluation ------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The k-NN probe (val images classified by their neighbours in a bank of train
        images) of the backbone's features, when the data has labels."""
        from mlscale.train.checkpoint import unwrap_model

        if not self.labelled:
            return {}
        bank_rows, query_rows = monitor_rows(self.cfg, len(self.train_split), len(self.val_split))
        backbone = self.evaluated_backbone(unwrap_model(model))
        bank = probe.features(backbone, self.train_split.images[bank_rows], self.mean, self.std, self.runtime)
        queries = probe.features(backbone, self.val_split.images[query_rows], self.mean, self.std, self.runtime)
        top1 = probe.knn_top1(bank, torch.as_tensor(self.train_split.labels[bank_rows]), queries,
                              torch.as_tensor(self.val_split.labels[query_rows]), self.images.num_classes)
        return {"knn_top1": top1}

    def evaluated_backbone(self, model: nn.Module) -> nn.Module:
        """The backbone whose features count (DINO: the teacher's)."""
        return model.backbone

    # -- a finished run ----------------------------------------------------------------
    @classmethod
    def load_run(cls, run_dir: Path, step: int | None = None, device: Any = "cpu") -> Any:
        return load_pretrained(run_dir, step, device)

    @classmethod
    def evaluate_run(cls, run_dir: Path, data: Path | None = None, split: str = "val",
                     step: int | None = None, device: Any = "cpu") -> dict[str, Any]:
        from mlscale.tasks.selfsup.evaluate import evaluate_features

        return evaluate_features(run_dir, data, "knn", split, step, device)


def monitor_rows(cfg: Any, n_train: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows of the k-NN bank, val rows it classifies) of the probe during training."""
    m, seed = cfg.monitor, cfg.train.seed
    return _first(n_train, m.knn_bank, seed), _first(n_val, m.knn_queries, seed + 1)


def _first(n: int, limit: int, seed: int) -> np.ndarray:
    """A fixed random subset of `limit` of n rows (all when limit is 0 or n), sorted."""
    if limit == 0 or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def load_network(run_dir: Path, step: int | None = None) -> tuple[type, Any, nn.Module, dict[str, Any], int]:
    """(task class, config, the whole trained network in eval mode, RUN/selfsup.json,
    checkpoint step) of a self-supervised run; DINO's network holds the teacher's weights."""
    from safetensors.torch import load_file

    from mlscale.config import from_dict
    from mlscale.train.checkpoint import CONFIG, checkpoint_step, load_checkpoint, pick_checkpoint

    run_dir = Path(run_dir)
    marker = read_json(run_dir / MARKER)
    cls = get_task(marker["method"])
    cfg = from_dict(cls.config_cls, read_json(run_dir / CONFIG))
    ckpt = pick_checkpoint(run_dir, step)
    network = cls.build_network(cfg)
    load_checkpoint(ckpt, network)
    extra = ckpt / "task.safetensors"
    if extra.exists():
        teacher = {k[len("teacher."):]: v for k, v in load_file(str(extra)).items() if k.startswith("teacher.")}
        if teacher:
            network.load_state_dict(teacher)
    return cls, cfg, network.eval(), marker, checkpoint_step(ckpt)


def load_pretrained(run_dir: Path, step: int | None = None, device: Any = "cpu") -> Any:
    """The backbone of a self-supervised run (DINO: the teacher's weights), eval mode, as a
    `LoadedRun` with `.preprocess` (mean, std, shape) and `.classes`."""
    from mlscale.train.checkpoint import CHECKPOINTS, LoadedRun, checkpoint_name

    _, cfg, network, marker, at = load_network(run_dir, step)
    path = Path(run_dir) / CHECKPOINTS / checkpoint_name(at)
    loaded = LoadedRun(model=network.backbone.to(device).eval(), config=cfg, tokenizer=None,
                       step=at, path=path, run_dir=Path(run_dir))
    loaded.preprocess = marker  # type: ignore[attr-defined]
    loaded.classes = marker["classes"]  # type: ignore[attr-defined]
    return loaded
